# Head revision of the example repository: bumps hello, fixes figlet, breaks cowsay's build, adds
# ripgrep, removes oldtool, and adds an attribute that fails to evaluate.
let
  inherit (import ./lib.nix) mk;
  stdenv = mk { pname = "stdenv"; version = "1"; script = "echo stdenv > $out"; };
in
rec {
  hello = mk {
    pname = "hello"; version = "2.13"; deps = [ stdenv ];
    script = "echo 'Hello, world! (2.13)' > $out";
    meta = { description = "Prints a greeting"; license = "gpl3Plus"; };
  };
  cowsay = mk {
    pname = "cowsay"; version = "3.8"; deps = [ stdenv hello ];
    script = "echo 'cowsay: test suite failed' >&2; exit 1";
    meta = { description = "A talking cow"; license = "gpl3Only"; };
  };
  figlet = mk {
    pname = "figlet"; version = "2.2.5"; deps = [ stdenv ];
    script = "echo figlet > $out";
  };
  ripgrep = mk {
    pname = "ripgrep"; version = "14.1"; deps = [ stdenv ];
    script = "echo rg > $out";
    meta = { description = "Fast grep"; license = "mit"; };
  };
  brokenEval = throw "brokenEval: this attribute no longer evaluates";
  tools = {
    recurseForDerivations = true;
    jq = mk { pname = "jq"; version = "1.7"; deps = [ stdenv ]; script = "echo jq > $out"; };
  };
}
