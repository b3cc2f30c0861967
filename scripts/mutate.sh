#!/usr/bin/env sh
# npm run mutate: StrykerJS over the money rules (stryker.config.mjs). StrykerJS is installed on
# first use into .stryker-tools/ rather than kept in devDependencies: its prompt packages want
# Node.js 20.17, and `npm install` must stay free of engine warnings on 20.6. Its own copy of
# TypeScript sits beside it, where StrykerJS's tsconfig step looks for it.
set -eu
cd "$(dirname "$0")/.."
tools=.stryker-tools
if [ ! -x "$tools/node_modules/.bin/stryker" ]; then
  npm install --prefix "$tools" --no-save --no-audit --no-fund @stryker-mutator/core@9.5.1 "typescript@$(node -p "require('typescript/package.json').version")"
fi
exec "$tools/node_modules/.bin/stryker" run "$@"
