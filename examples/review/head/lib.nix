# Helpers for the example: trivial derivations built by /bin/sh (PATH is empty inside Nix builds, so
# the scripts use shell builtins only). Nothing here needs network access or nixpkgs.
{
  mk = { pname, version, script, deps ? [ ], meta ? { } }:
    derivation {
      name = "${pname}-${version}";
      inherit pname version deps;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" script ];
    } // { inherit meta; };
}
