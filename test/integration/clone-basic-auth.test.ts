// A backup registry behind htpasswd (Basic auth) with the nested layout, and a private source
// whose credentials come from REGISTRY_AUTH_FILE (shared, as node-level credentials are) or with
// the request (a workload's own).

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNodeFunction, type CloneFunction } from '../../testbed/clone-function.ts';
import { dockerManifestList, fetchManifest, pushImage, sha256Digest } from '../../testbed/images.ts';
import { startRegistry, type Registry } from '../../testbed/registry.ts';
import { credentialForms, expectCredentialsNotLogged } from '../support/logs.ts';

describe('Basic auth registries', () => {
  let source: Registry;
  let backup: Registry;
  let fn: CloneFunction;
  let dir: string;

  beforeAll(async () => {
    [source, backup] = await Promise.all([startRegistry({ auth: 'token' }), startRegistry({ auth: 'htpasswd' })]);
    dir = await mkdtemp(join(tmpdir(), 'auth-file-'));
    const authFile = join(dir, 'config.json');
    // One entry in the "auth" form, one in the username/password form.
    const auth = Buffer.from(`${backup.credentials!.username}:${backup.credentials!.password}`).toString('base64');
    await writeFile(
      authFile,
      JSON.stringify({ auths: { [`http://${backup.host}`]: { auth }, [source.host]: source.credentials } }),
      { mode: 0o600 },
    );
    fn = await startNodeFunction({
      BACKUP_REGISTRY: backup.host,
      BACKUP_NAMESPACE: 'backups/cluster-1',
      INSECURE_REGISTRIES: `${source.host},${backup.host}`,
      REGISTRY_AUTH_FILE: authFile,
      SHARED_CREDENTIAL_REGISTRIES: source.host,
    });
  });

  afterAll(async () => {
    await fn?.stop();
    await Promise.all([source?.stop(), backup?.stop()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('copies from a private token-auth source into an htpasswd backup, nested under a path', async () => {
    const image = dockerManifestList('basic-auth');
    await pushImage(source.url, 'private/app', image, { tag: '2.0', credentials: source.credentials! });
    const response = await fn.clone({ images: [`${source.host}/private/app:2.0`] });
    const [result] = response.body.results;
    const repository = `backups/cluster-1/${source.host.replace(':', '_')}/private/app`;
    expect(result, JSON.stringify(result)).toMatchObject({
      status: 'copied',
      digest: image.root.digest,
      target: `${backup.host}/${repository}:2.0@${image.root.digest}`,
    });
    for (const manifest of image.manifests) {
      const fetched = await fetchManifest(backup.url, repository, manifest.digest, { credentials: backup.credentials! });
      expect(sha256Digest(fetched.bytes)).toBe(manifest.digest);
    }
    await expectCredentialsNotLogged(fn, `${source.host}/private/app:2.0`, [
      ...credentialForms(backup.credentials!),
      ...credentialForms(source.credentials!),
    ]);
  });

  it('copies several images at once from a freshly started function, none refused by the Basic-auth race', async () => {
    // Each request sent before a parallel one learned the Basic challenge carried no credentials:
    // its 401 is no refusal of them (it once failed one or more of these images).
    const images = Array.from({ length: 6 }, (_, i) => dockerManifestList(`parallel-${i}`));
    await Promise.all(
      images.map((image, i) =>
        pushImage(source.url, `parallel/app-${i}`, image, { tag: 'v1', credentials: source.credentials! }),
      ),
    );
    const fresh = await startNodeFunction({
      BACKUP_REGISTRY: backup.host,
      BACKUP_NAMESPACE: 'parallel',
      INSECURE_REGISTRIES: `${source.host},${backup.host}`,
      IMAGE_CONCURRENCY: '6',
      SHARED_CREDENTIAL_REGISTRIES: source.host,
      REGISTRY_AUTH_JSON: JSON.stringify({ auths: { [backup.host]: backup.credentials, [source.host]: source.credentials } }),
    });
    try {
      const response = await fresh.clone({ images: images.map((_, i) => `${source.host}/parallel/app-${i}:v1`) });
      const results = response.body.results as Array<{ status: string; error?: string }>;
      expect(results.map((result) => result.error ?? result.status)).toEqual(images.map(() => 'copied'));
    } finally {
      await fresh.stop();
    }
  });

  it('pulls a private source with the credentials the request brings, and only for that request', async () => {
    const image = dockerManifestList('tenant-credentials');
    await pushImage(source.url, 'team-a/app', image, { tag: '1.0', credentials: source.credentials! });
    // The function's own credentials for the source exist, but are not shared with requests.
    const tenantFunction = await startNodeFunction({
      BACKUP_REGISTRY: backup.host,
      BACKUP_NAMESPACE: 'tenants',
      INSECURE_REGISTRIES: `${source.host},${backup.host}`,
      REGISTRY_AUTH_JSON: JSON.stringify({ auths: { [backup.host]: backup.credentials, [source.host]: source.credentials } }),
    });
    const reference = `${source.host}/team-a/app:1.0`;
    try {
      const [anonymous] = (await tenantFunction.clone({ images: [reference] })).body.results;
      expect(anonymous).toMatchObject({ status: 'failed', reason: 'source_unauthorized' });
      expect(anonymous.error).toMatch(/401/);
      const [withOwn] = (await tenantFunction.clone({ images: [{ image: reference, credentials: source.credentials }] })).body
        .results;
      expect(withOwn, JSON.stringify(withOwn)).toMatchObject({ status: 'copied', digest: image.root.digest });
      // Nothing the workload's credentials unlocked serves a request without them: not a token,
      // not the copy already made (the source is asked every time).
      const [again] = (await tenantFunction.clone({ images: [reference] })).body.results;
      expect(again.status).toBe('failed');
      const [wrong] = (
        await tenantFunction.clone({
          images: [
            { image: reference, credentials: { username: source.credentials!.username, password: 'someone-elses-guess' } },
          ],
        })
      ).body.results;
      expect(wrong.status).toBe('failed');
      await expectCredentialsNotLogged(tenantFunction, reference, [
        ...credentialForms(source.credentials!),
        ...credentialForms({ username: source.credentials!.username, password: 'someone-elses-guess' }),
      ]);
    } finally {
      await tenantFunction.stop();
    }
  });

  it('fails clearly, without the password, when the backup refuses the credentials', async () => {
    const wrong = await startNodeFunction({
      BACKUP_REGISTRY: backup.host,
      BACKUP_NAMESPACE: 'backups',
      INSECURE_REGISTRIES: `${source.host},${backup.host}`,
      SHARED_CREDENTIAL_REGISTRIES: source.host,
      REGISTRY_AUTH_JSON: JSON.stringify({
        auths: {
          [backup.host]: { username: backup.credentials!.username, password: 'not-the-password' },
          [source.host]: source.credentials,
        },
      }),
    });
    try {
      const [result] = (await wrong.clone({ images: [`${source.host}/private/app:2.0`] })).body.results;
      expect(result.status).toBe('failed');
      expect(result.error).toMatch(/401/);
      expect(result.error).not.toContain('not-the-password');
    } finally {
      await wrong.stop();
    }
  });
});
