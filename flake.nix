{
  inputs.evil = { url = "http://127.0.0.1:18765/x.tar.gz"; flake = false; };
  outputs = { self, evil }: { x = "${evil}"; };
}
