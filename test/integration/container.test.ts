// The container image cannot be built here (no Docker engine). What can be checked is checked:
// the Dockerfile's shape, that the build it describes produces the entry points the image and the
// manifests name, and that the build output runs with production dependencies only.

import { execFile, spawn } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleBridge } from '../../scripts/bundle-bridge.ts';
import { dockerImage, pushImage } from '../../testbed/images.ts';
import { freePort } from '../../testbed/ports.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';
import { startRegistry } from '../../testbed/registry.ts';

const run = promisify(execFile);

describe('container image', () => {
  let dir: string;
  let dockerfile: string;

  beforeAll(async () => {
    dockerfile = await readFile(join(REPO_ROOT, 'Dockerfile'), 'utf8');
    dir = await mkdtemp(join(tmpdir(), 'image-build-'));
    // What the Dockerfile's build stage does (npm run build), into a scratch folder.
    await run(
      process.execPath,
      [join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--outDir', join(dir, 'dist')],
      {
        cwd: REPO_ROOT,
      },
    );
    await bundleBridge(join(dir, 'dist/bridge/main.js'));
    // What its deps stage does: production dependencies only.
    await cp(join(REPO_ROOT, 'package.json'), join(dir, 'package.json'));
    await cp(join(REPO_ROOT, 'package-lock.json'), join(dir, 'package-lock.json'));
    await run('npm', ['ci', '--omit=dev', '--omit=optional', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], {
      cwd: dir,
      env: { ...process.env, npm_config_loglevel: 'error' },
    });
  }, 300_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('is a multi-stage build on the current Node LTS, running as a non-root user', () => {
    const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/gim)];
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const [, image] of stages) expect(image).toMatch(/^node:24[-.]/);
    expect(dockerfile).toMatch(/--omit=dev/);
    expect(dockerfile).toMatch(/^USER\s+(?!root|0\b)\S+/m);
  });

  it('builds every entry point the image and the manifests name', async () => {
    const named = new Set<string>();
    for (const match of dockerfile.matchAll(/"(dist\/[^"]+\.js)"/g)) named.add(match[1]!);
    const manifests = await readFile(join(REPO_ROOT, 'k8s/setup/cloner-deployment.yml'), 'utf8');
    for (const match of manifests.matchAll(/(dist\/[\w/.-]+\.js)/g)) named.add(match[1]!);
    expect([...named].sort()).toEqual(['dist/bridge/main.js', 'dist/functions/node.js']);
    for (const entry of named) expect(existsSync(join(dir, entry)), entry).toBe(true);
    expect(existsSync(join(dir, 'node_modules/hono')), 'the production dependencies').toBe(true);
    expect(existsSync(join(dir, 'node_modules/typescript')), 'no dev dependencies').toBe(false);
    expect(existsSync(join(dir, 'node_modules/vitest')), 'no dev dependencies').toBe(false);
  });

  it('runs the clone function from the build output and copies an image', async () => {
    const [source, backup] = await Promise.all([startRegistry(), startRegistry()]);
    const port = await freePort();
    const token = 'container-test-token-0123456789';
    const child = spawn(process.execPath, ['dist/functions/node.js'], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '',
        NODE_ENV: 'production',
        PORT: String(port),
        HOST: '127.0.0.1',
        AUTH_TOKEN: token,
        BACKUP_REGISTRY: backup.host,
        BACKUP_NAMESPACE: 'backup',
        INSECURE_REGISTRIES: `${source.host},${backup.host}`,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    try {
      const image = dockerImage('container');
      await pushImage(source.url, 'app', image, { tag: 'v1' });
      const url = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 100; i++) {
        if (
          await fetch(`${url}/healthz`).then(
            (r) => r.ok,
            () => false,
          )
        )
          break;
        await new Promise((r) => setTimeout(r, 100));
      }
      const response = await fetch(`${url}/clone`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ images: [`${source.host}/app:v1`] }),
      });
      const body = (await response.json()) as { results: Array<{ status: string; digest: string }> };
      expect(body.results[0], output).toMatchObject({ status: 'copied', digest: image.root.digest });
      const metrics = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${token}` } });
      const text = await metrics.text();
      expect(text).toMatch(/^image_clone_clones_total\{status="copied"\} 1$/m);
      expect(text).toMatch(/^image_clone_bytes_copied_total [1-9]\d*$/m);
      expect(text).toMatch(/^image_clone_copy_duration_seconds_count\{status="copied"\} 1$/m);
      expect(text).toMatch(/^image_clone_copies_in_flight 0$/m);
      expect(text).toMatch(/^image_clone_registry_retries_total 0$/m);
    } finally {
      child.kill('SIGTERM');
      await Promise.all([source.stop(), backup.stop()]);
    }
  });

  it('loads the bridge from its bundle, which needs no node_modules (and refuses to start without configuration)', async () => {
    const alone = await mkdtemp(join(tmpdir(), 'bridge-bundle-'));
    try {
      await cp(join(dir, 'dist/bridge/main.js'), join(alone, 'main.js'));
      await writeFile(join(alone, 'package.json'), '{"type":"module"}');
      const result = await run(process.execPath, ['main.js'], {
        cwd: alone,
        env: { PATH: process.env.PATH ?? '' },
      }).catch((error) => error);
      expect(result.stderr).toMatch(/FUNCTION_URL/);
      expect(result.code).toBe(2);
    } finally {
      await rm(alone, { recursive: true, force: true });
    }
  });
});
