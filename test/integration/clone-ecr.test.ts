// AWS ECR as the backup: a local endpoint speaking ECR's AWS JSON 1.1 protocol with SigV4, and an
// ECR-like registry (repositories must exist, immutable tags, blob GETs redirected to "S3").

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNodeFunction, type CloneFunction } from '../../testbed/clone-function.ts';
import { startEcr, type Ecr } from '../../testbed/ecr.ts';
import {
  dockerImage,
  fetchManifest,
  ociIndexWithAttestations,
  pushImage,
  sha256Digest,
  type TestImage,
} from '../../testbed/images.ts';
import { startRegistry, type Registry } from '../../testbed/registry.ts';
import { credentialForms, expectCredentialsNotLogged } from '../support/logs.ts';
import type { Result } from './clone-scenarios.ts';

describe('ECR as the backup registry', () => {
  let ecr: Ecr;
  let source: Registry;
  let fn: CloneFunction;

  function functionEnv(extra: Record<string, string> = {}) {
    return {
      ...ecr.env,
      BACKUP_REGISTRY: ecr.registryHost,
      BACKUP_NAMESPACE: 'mirror',
      ECR_REGION: ecr.region,
      INSECURE_REGISTRIES: `${source.host},${ecr.registryHost}`,
      ...extra,
    };
  }

  beforeAll(async () => {
    [ecr, source] = await Promise.all([startEcr(), startRegistry({ auth: 'none' })]);
    fn = await startNodeFunction(functionEnv({ ECR_TAG_MUTABILITY: 'IMMUTABLE', ECR_SCAN_ON_PUSH: 'true' }));
  });

  afterAll(async () => {
    await fn?.stop();
    await Promise.all([ecr?.stop(), source?.stop()]);
  });

  async function clone(target: CloneFunction, images: string[]): Promise<Result[]> {
    const response = await target.clone({ images });
    expect(response.status, JSON.stringify(response.body)).toBe(200);
    return response.body.results;
  }

  async function expectInEcr(image: TestImage, repository: string) {
    const password = ecr.tokens.at(-1)!.password;
    for (const manifest of image.manifests) {
      const fetched = await fetchManifest(ecr.registryUrl, repository, manifest.digest, {
        credentials: { username: 'AWS', password },
      });
      expect(fetched.status).toBe(200);
      expect(sha256Digest(fetched.bytes)).toBe(manifest.digest);
    }
  }

  it('creates the nested repository with the configured settings, then copies into it', async () => {
    const image = ociIndexWithAttestations('ecr-index');
    await pushImage(source.url, 'team/app', image, { tag: '1.0' });
    const before = ecr.registryRequests.length;
    const [result] = await clone(fn, [`${source.host}/team/app:1.0`]);
    const repository = `mirror/${source.host.replace(':', '_')}/team/app`;
    expect(result).toMatchObject({
      status: 'copied',
      digest: image.root.digest,
      target: `${ecr.registryHost}/${repository}:1.0@${image.root.digest}`,
    });
    expect(ecr.repositories.get(repository)).toMatchObject({
      tagMutability: 'IMMUTABLE',
      scanOnPush: true,
      encryption: { encryptionType: 'AES256' },
    });
    await expectInEcr(image, repository);
    // Just created, so known to be empty: no blob or manifest in it was asked about (only the tag,
    // before the repository was created).
    const sinceCopy = ecr.registryRequests.slice(before);
    const asked = sinceCopy.filter(
      (r) => (r.method === 'HEAD' && /\/(blobs|manifests)\/sha256:/.test(r.url)) || r.url.includes('/tags/list'),
    );
    expect(asked.map((r) => `${r.method} ${r.url}`)).toEqual([]);
    // Seen by the same record: the copy's uploads, so the record missed nothing asked.
    expect(sinceCopy.some((r) => r.method === 'PUT' && r.url.includes(`/${repository}/manifests/`))).toBe(true);
    // Signed with SigV4 by the SDK's default credential chain (the environment here).
    expect(ecr.requests.filter((r) => r.operation === 'GetAuthorizationToken' && r.ok)).toHaveLength(1);
  });

  it('calls an immutable tag that already points at the digest a success, also when two copies race', async () => {
    const image = dockerImage('ecr-race', { layers: 3, layerSize: 200 * 1024 });
    await pushImage(source.url, 'race/app', image, { tag: 'stable' });
    const second = await startNodeFunction(functionEnv({ ECR_TAG_MUTABILITY: 'IMMUTABLE' }));
    try {
      const reference = `${source.host}/race/app:stable`;
      const [[a], [b]] = await Promise.all([clone(fn, [reference]), clone(second, [reference])]);
      for (const result of [a!, b!]) expect(result.status, result.error).not.toBe('failed');
      const repository = `mirror/${source.host.replace(':', '_')}/race/app`;
      expect(ecr.repositories.get(repository)!.createdCount).toBe(1);
      await expectInEcr(image, repository);
      const [again] = await clone(second, [reference]);
      expect(again).toMatchObject({ status: 'exists', digest: image.root.digest });
    } finally {
      await second.stop();
    }
  });

  it('fetches a new registry token when ECR refuses an expired one', async () => {
    const image = dockerImage('ecr-expired');
    await pushImage(source.url, 'expired/app', image, { tag: 'v1' });
    ecr.expireTokens();
    const issuedBefore = ecr.tokens.length;
    const [result] = await clone(fn, [`${source.host}/expired/app:v1`]);
    expect(result!.status, result!.error).toBe('copied');
    expect(ecr.tokens.length).toBeGreaterThan(issuedBefore);
  });

  it('follows ECR’s redirect of blob downloads to S3 without sending Authorization there', async () => {
    // ECR as a source this time: a second function backs up from it into a plain registry.
    const image = dockerImage('ecr-as-source', { layers: 2, layerSize: 64 * 1024 });
    ecr.createRepository('source/app', {});
    const token = ecr.issueToken();
    await pushImage(ecr.registryUrl, 'source/app', image, {
      tag: 'v1',
      credentials: { username: 'AWS', password: token.password },
    });
    const backup = await startRegistry({ auth: 'none' });
    const copier = await startNodeFunction({
      BACKUP_REGISTRY: backup.host,
      BACKUP_NAMESPACE: 'backup',
      // The "S3" origin is plain HTTP on loopback: a redirect there is followed only because it is
      // listed (real S3 is HTTPS, which needs no listing; a redirect to an unlisted plain-HTTP host
      // is refused, see test/integration/hostile-scenarios.ts).
      INSECURE_REGISTRIES: `${ecr.registryHost},${backup.host},${new URL(ecr.s3Origin).host}`,
      // An ECR the nodes pull from: the function's own credentials serve it too.
      SHARED_CREDENTIAL_REGISTRIES: ecr.registryHost,
      REGISTRY_AUTH_JSON: JSON.stringify({ auths: { [ecr.registryHost]: { username: 'AWS', password: token.password } } }),
    });
    try {
      const s3Before = ecr.s3Requests.length;
      const [result] = await clone(copier, [`${ecr.registryHost}/source/app:v1`]);
      expect(result!.status, result!.error).toBe('copied');
      const downloads = ecr.s3Requests.slice(s3Before);
      expect(downloads.length).toBe(image.blobs.length);
      for (const download of downloads) {
        expect(download.status).toBe(200);
        expect(download.headers.authorization).toBeUndefined();
      }
    } finally {
      await copier.stop();
      await backup.stop();
    }
  });

  it('keeps the AWS secret and the registry tokens it was given out of its logs', async () => {
    const reference = `${source.host}/logs/app:v1`;
    await pushImage(source.url, 'logs/app', dockerImage('ecr-logs'), { tag: 'v1' });
    // With every token expired, the copy needs a new one, whatever ran before: a token is
    // certainly handed to this function here, and checked for below.
    ecr.expireTokens();
    const issuedBefore = ecr.tokens.length;
    const [result] = await clone(fn, [reference]);
    expect(result!.status, result!.error).toBe('copied');
    expect(ecr.tokens.length).toBeGreaterThan(issuedBefore);
    await expectCredentialsNotLogged(fn, reference, [ecr.secretAccessKey, ...ecr.tokens.flatMap(credentialForms)]);
  });
});
