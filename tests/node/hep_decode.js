// Decodes HEP3 packets with hep-js (sipcapture's decoder), independently of midgram's own:
// one hex-encoded packet per line on stdin, one JSON document per line on stdout
// ({"rcinfo": {...}, "payload": "..."}, or false when hep-js cannot decode the packet).
"use strict";
const HEP = require("hep-js");
const input = require("fs").readFileSync(0, "utf8");
for (const line of input.split("\n")) {
  if (!line.trim()) continue;
  const decoded = HEP.decapsulate(Buffer.from(line.trim(), "hex"));
  process.stdout.write(JSON.stringify(decoded === undefined ? false : decoded) + "\n");
}
