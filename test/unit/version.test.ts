// One version, package.json's: the image tag the manifests, the kustomization and the chart name,
// the chart's own version, and what the bridge and the function say they run.

import { loadYaml } from '@kubernetes/client-node';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VERSION as BRIDGE_VERSION } from '../../bridge/version.ts';
import { VERSION as FUNCTION_VERSION } from '../../functions/version.ts';
import { disagreements, propagate, VERSIONED } from '../../scripts/set-version.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';

const packageJson = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
const IMAGE = 'ghcr.io/image-clone-controller/image-clone-controller';
const scratch: string[] = [];

afterAll(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

/** The versioned files and package.json, copied into a scratch repository. */
async function copyOfRepository(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'version-test-'));
  scratch.push(root);
  for (const file of ['package.json', ...new Set(VERSIONED.map((place) => place.file))]) {
    await mkdir(dirname(join(root, file)), { recursive: true });
    await cp(join(REPO_ROOT, file), join(root, file));
  }
  return root;
}

describe('the release version', () => {
  it('is package.json’s everywhere it is written', async () => {
    expect(await disagreements(REPO_ROOT)).toEqual([]);
    const chart = loadYaml<{ version: string; appVersion: string }>(
      await readFile(join(REPO_ROOT, 'k8s/chart/Chart.yaml'), 'utf8'),
    );
    expect([chart.version, chart.appVersion]).toEqual([packageJson.version, packageJson.version]);
    const values = loadYaml<{ image: { repository: string; tag: string } }>(
      await readFile(join(REPO_ROOT, 'k8s/chart/values.yaml'), 'utf8'),
    );
    // The chart's image is the manifests' one, at appVersion unless a tag is set.
    expect(values.image).toMatchObject({ repository: IMAGE, tag: '' });
  });

  it('is what the bridge and the function report', () => {
    expect(BRIDGE_VERSION).toBe(packageJson.version);
    expect(FUNCTION_VERSION).toBe(packageJson.version);
  });

  it('names the image by version, never :latest, wherever the repository installs it', async () => {
    for (const file of ['k8s/setup/cloner-deployment.yml', 'k8s/kustomization.yaml']) {
      const text = await readFile(join(REPO_ROOT, file), 'utf8');
      expect(text, file).not.toMatch(/:latest\b/);
    }
    const deployments = await readFile(join(REPO_ROOT, 'k8s/setup/cloner-deployment.yml'), 'utf8');
    const images = [...deployments.matchAll(/^\s*image:\s*(\S+)$/gm)].map((match) => match[1]);
    expect(images).toEqual([`${IMAGE}:${packageJson.version}`, `${IMAGE}:${packageJson.version}`]);
  });

  it('is carried everywhere by scripts/set-version.ts after a bump, and the check sees a place left behind', async () => {
    const root = await copyOfRepository();
    const bumped = { ...packageJson, version: '9.8.7' };
    await writeFile(join(root, 'package.json'), JSON.stringify(bumped, null, 2));
    // The bump alone leaves each place behind, and the check names every one.
    const behind = await disagreements(root);
    expect(behind).toHaveLength(VERSIONED.length + 1); // the two images of cloner-deployment.yml count twice
    expect(behind.every((problem) => problem.includes('package.json says 9.8.7'))).toBe(true);
    expect(await propagate(root)).toBe('9.8.7');
    expect(await disagreements(root)).toEqual([]);
    const chart = loadYaml<{ version: string; appVersion: string }>(await readFile(join(root, 'k8s/chart/Chart.yaml'), 'utf8'));
    expect([chart.version, chart.appVersion]).toEqual(['9.8.7', '9.8.7']);
    expect(await readFile(join(root, 'k8s/setup/cloner-deployment.yml'), 'utf8')).toContain(`image: ${IMAGE}:9.8.7`);
    expect(await readFile(join(root, 'k8s/kustomization.yaml'), 'utf8')).toMatch(/newTag: 9\.8\.7$/m);
  });
});
