#!/bin/sh
# Installs node-smpp (pinned, with its two dependencies, in package-lock.json) into
# scripts/interop/node_modules, which git ignores, for tests/e2e/test_interop_node_smpp.py.
# Needs node and npm (Debian: apt-get install nodejs npm). The test skips, saying why, until
# this has run; NODE_SMPP_PATH names a node-smpp installed elsewhere instead.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node -e 'console.log("node-smpp " + require("./node_modules/smpp/package.json").version + " installed in " + process.cwd() + "/node_modules")'
