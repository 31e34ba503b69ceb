#!/bin/sh
# Installs node-smpp (pinned, with its two dependencies, in package-lock.json) into
# scripts/interop/node_modules, which git ignores, for tests/e2e/test_interop_node_smpp.py.
# Needs node and npm (Debian: apt-get install nodejs npm). The test runs this itself where
# node-smpp is missing and npm is here (tests/interop_install.py: once for all of pytest's
# workers), and skips, saying why, when it fails; NODE_SMPP_PATH names a node-smpp installed
# elsewhere instead.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node -e 'console.log("node-smpp " + require("./node_modules/smpp/package.json").version + " installed in " + process.cwd() + "/node_modules")'
