// The release's version lives in package.json and nowhere else by choice; the places that must
// repeat it (a YAML file cannot read package.json) are written from it here:
//
//   npm version 0.2.0 --no-git-tag-version     # package.json and package-lock.json
//   node scripts/set-version.ts                # the chart, the manifests, the kustomization
//   node scripts/set-version.ts --check        # exit 1, naming each place that disagrees
//
// test/unit/version.test.ts runs the check, so a release cannot be cut with the places apart.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPOSITORY = 'ghcr.io/image-clone-controller/image-clone-controller';

interface Place {
  /** Relative to the repository. */
  readonly file: string;
  readonly what: string;
  /** Matches where the version is written; group 1 is what precedes it, group 2 the version. */
  readonly pattern: RegExp;
}

/** Every place that names the release, besides package.json itself. */
export const VERSIONED: readonly Place[] = [
  { file: 'k8s/chart/Chart.yaml', what: 'the chart version', pattern: /^(version:\s*)"?([^"\s]+)"?$/m },
  {
    file: 'k8s/chart/Chart.yaml',
    what: 'the chart appVersion (the default image tag)',
    pattern: /^(appVersion:\s*)"?([^"\s]+)"?$/m,
  },
  {
    file: 'k8s/kustomization.yaml',
    what: 'the image tag of kustomize',
    pattern: /^(\s*- name: ghcr\.io\/image-clone-controller\/image-clone-controller\s*\n\s*newTag:\s*)"?([^"\s]+)"?$/m,
  },
  {
    file: 'k8s/setup/cloner-deployment.yml',
    what: 'the image of the bridge and the function',
    pattern: new RegExp(`^(\\s*image:\\s*${REPOSITORY.replace(/[./]/g, '\\$&')}:)(\\S+)$`, 'gm'),
  },
];

export async function packageVersion(root: string): Promise<string> {
  return (JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Each place whose version is not package.json's (or that no longer matches its pattern). */
export async function disagreements(root: string): Promise<string[]> {
  const version = await packageVersion(root);
  const problems: string[] = [];
  for (const place of VERSIONED) {
    const text = await readFile(join(root, place.file), 'utf8');
    const found = [
      ...text.matchAll(
        new RegExp(place.pattern.source, place.pattern.flags.includes('g') ? place.pattern.flags : `${place.pattern.flags}g`),
      ),
    ];
    if (found.length === 0) problems.push(`${place.file}: ${place.what} not found (update scripts/set-version.ts)`);
    for (const match of found) {
      if (match[2] !== version) problems.push(`${place.file}: ${place.what} is ${match[2]}, package.json says ${version}`);
    }
  }
  return problems;
}

/** Writes package.json's version into every place. */
export async function propagate(root: string): Promise<string> {
  const version = await packageVersion(root);
  if (!/^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/.test(version)) throw new Error(`package.json's version ${version} is not x.y.z[-pre]`);
  const files = [...new Set(VERSIONED.map((place) => place.file))];
  for (const file of files) {
    let text = await readFile(join(root, file), 'utf8');
    for (const place of VERSIONED.filter((candidate) => candidate.file === file)) {
      const flags = place.pattern.flags.includes('g') ? place.pattern.flags : `${place.pattern.flags}g`;
      const quoted = place.what.includes('appVersion');
      text = text.replace(
        new RegExp(place.pattern.source, flags),
        (_match, before: string) => `${before}${quoted ? `"${version}"` : version}`,
      );
    }
    await writeFile(join(root, file), text);
  }
  return version;
}

if (import.meta.main) {
  const root = fileURLToPath(new URL('../', import.meta.url));
  if (process.argv.includes('--check')) {
    const problems = await disagreements(root);
    for (const problem of problems) process.stderr.write(`${problem}\n`);
    process.exit(problems.length === 0 ? 0 : 1);
  }
  const version = await propagate(root);
  process.stdout.write(`every place names ${version} now: ${[...new Set(VERSIONED.map((place) => place.file))].join(', ')}\n`);
}
