// Bundles the bridge into one file, dist/bridge/main.js, which is what the container runs.
//
// Why: @kubernetes/client-node is about 1,000 modules and 25 MB of JavaScript (the generated API
// clients and models, mostly doc comments), and Node keeps the source of every module it loads.
// Loaded as separate modules, the bridge is ~110 MiB resident (compiled by tsc; ~137 MiB run from
// its TypeScript) before it has listed a single workload; as one bundle, ~90 MiB. With 10,000 Deployments that is the difference between
// missing and meeting the bridge's 200 MiB budget (docs/scale.md). Identifiers are left as they
// are, so stack traces stay readable; the bundle needs nothing from node_modules at run time.
//
//   node scripts/bundle-bridge.ts [outFile]      (default dist/bridge/main.js; part of npm run build)

import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../', import.meta.url));

export async function bundleBridge(outfile = `${repoRoot}dist/bridge/main.js`): Promise<string> {
  await build({
    entryPoints: [`${repoRoot}bridge/main.ts`],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    // CommonJS dependencies (js-yaml, undici's internals …) call require() for Node's built-ins,
    // which an ES module does not have: give the bundle one.
    banner: {
      js: "import { createRequire as __createRequire } from 'node:module';\nconst require = __createRequire(import.meta.url);",
    },
    legalComments: 'none',
    logLevel: 'warning',
  });
  return outfile;
}

if (import.meta.main) {
  const outfile = await bundleBridge(process.argv[2]);
  process.stdout.write(`bundled the bridge into ${outfile}\n`);
}
