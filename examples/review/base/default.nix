# Base revision of the example repository.
let
  inherit (import ./lib.nix) mk;
  stdenv = mk { pname = "stdenv"; version = "1"; script = "echo stdenv > $out"; };
in
rec {
  hello = mk {
    pname = "hello"; version = "2.12"; deps = [ stdenv ];
    script = "echo 'Hello, world!' > $out";
    meta = { description = "Prints a greeting"; license = "gpl3Plus"; };
  };
  cowsay = mk {
    pname = "cowsay"; version = "3.7"; deps = [ stdenv hello ];
    script = "echo moo > $out";
    meta = { description = "A talking cow"; license = "gpl3Only"; };
  };
  # Broken in base: fails to build.
  figlet = mk {
    pname = "figlet"; version = "2.2.5"; deps = [ stdenv ];
    script = "echo 'figlet: missing font' >&2; exit 1";
  };
  # Removed in head.
  oldtool = mk { pname = "oldtool"; version = "0.1"; deps = [ stdenv ]; script = "echo old > $out"; };
  tools = {
    recurseForDerivations = true;
    jq = mk { pname = "jq"; version = "1.7"; deps = [ stdenv ]; script = "echo jq > $out"; };
  };
}
