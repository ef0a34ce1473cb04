// The release this function belongs to: package.json's version, the one place a release is named
// (the image tag, the chart's appVersion and the manifests follow it; test/unit/version.test.ts).
// Logged at start on Node (and as an isolate first serves on Workers) and exposed on Node's
// /metrics as image_clone_function_build_info{version}.

import packageJson from '../package.json' with { type: 'json' };

export const VERSION: string = packageJson.version;
