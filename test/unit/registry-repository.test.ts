import { describe, expect, it } from 'vitest';
import { RegistryClient } from '../../functions/registry/client.ts';
import { StaticCredentials } from '../../functions/registry/credentials.ts';
import { digestOf } from '../../functions/registry/digest.ts';
import { MEDIA_TYPES } from '../../functions/registry/manifest.ts';
import { Repository, type Access } from '../../functions/registry/repository.ts';
import { FakeRegistry, ociError } from '../support/fake-registry.ts';

const policy = { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 1, maxTotalMs: 1000, maxRetryAfterMs: 1 };
const HOST = 'registry.example';

function repositoryOn(registry: FakeRegistry, access: Access = 'pull', name = 'team/app') {
  const client = new RegistryClient({
    fetch: registry.fetch,
    credentials: new StaticCredentials(new Map()),
    retryPolicy: policy,
  });
  return new Repository(client, { registry: HOST, repository: name }, access, { retryPolicy: policy });
}

const manifestBytes = new TextEncoder().encode(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.ociManifest,
    config: { mediaType: 'x', digest: `sha256:${'a'.repeat(64)}`, size: 2 },
    layers: [],
  }),
);
const manifestDigest = digestOf(manifestBytes);
const served = (bytes = manifestBytes) =>
  new Response(bytes, { status: 200, headers: { 'content-type': MEDIA_TYPES.ociManifest } });

describe('Repository: manifests', () => {
  it('resolves a tag with one HEAD when the registry names the digest', async () => {
    const registry = new FakeRegistry().route(
      'HEAD',
      `${HOST}/v2/team/app/manifests/v1`,
      () => new Response(null, { status: 200, headers: { 'docker-content-digest': manifestDigest } }),
    );
    expect(await repositoryOn(registry).resolve('v1')).toEqual({ digest: manifestDigest });
    expect(registry.sentTo(HOST)).toEqual(['HEAD /v2/team/app/manifests/v1']);
  });

  it('falls back to a GET (and keeps the bytes) when the HEAD names no digest', async () => {
    const registry = new FakeRegistry()
      .route('HEAD', `${HOST}/v2/team/app/manifests/v1`, () => new Response(null, { status: 200 }))
      .route('GET', `${HOST}/v2/team/app/manifests/v1`, () => served());
    const resolved = await repositoryOn(registry).resolve('v1');
    expect(resolved.digest).toBe(manifestDigest);
    expect(resolved.manifest?.bytes).toEqual(manifestBytes);
  });

  it('calls a missing tag permanent, with the reference in the message', async () => {
    const registry = new FakeRegistry();
    await expect(repositoryOn(registry).resolve('v9')).rejects.toThrow(
      'registry.example/team/app:v9 not found (no such tag or repository)',
    );
  });

  it('refuses a manifest fetched by digest whose bytes hash to another digest', async () => {
    const other = `sha256:${'b'.repeat(64)}`;
    const registry = new FakeRegistry().route('GET', `${HOST}/v2/team/app/manifests/${other}`, () => served());
    await expect(repositoryOn(registry).getManifest(other)).rejects.toThrow(/does not match its digest/);
  });

  it('pushes the exact bytes with their media type, and refuses a registry that stores another digest', async () => {
    const bodies: string[] = [];
    const registry = new FakeRegistry().route('PUT', `${HOST}/v2/team/app/manifests/v1`, (request) => {
      bodies.push(request.headers['content-type']!);
      return new Response(null, { status: 201, headers: { 'docker-content-digest': manifestDigest } });
    });
    const repository = repositoryOn(registry, 'push');
    const manifest = { bytes: manifestBytes, digest: manifestDigest, mediaType: MEDIA_TYPES.ociManifest };
    await repository.putManifest('v1', manifest);
    expect(bodies).toEqual([MEDIA_TYPES.ociManifest]);
    await expect(repository.putManifest('v1', { ...manifest, digest: `sha256:${'c'.repeat(64)}` })).rejects.toThrow(
      /the registry stored/,
    );
  });

  it('takes an immutable tag that already points at the digest as pushed (ECR)', async () => {
    const registry = new FakeRegistry()
      .route('PUT', `${HOST}/v2/team/app/manifests/v1`, () => ociError(400, 'TAG_INVALID', 'tag is immutable'))
      .route(
        'HEAD',
        `${HOST}/v2/team/app/manifests/v1`,
        () => new Response(null, { status: 200, headers: { 'docker-content-digest': manifestDigest } }),
      );
    const manifest = { bytes: manifestBytes, digest: manifestDigest, mediaType: MEDIA_TYPES.ociManifest };
    await expect(repositoryOn(registry, 'push').putManifest('v1', manifest)).resolves.toBeDefined();
    const elsewhere = new FakeRegistry().route('PUT', `${HOST}/v2/team/app/manifests/v1`, () =>
      ociError(400, 'TAG_INVALID', 'tag is immutable'),
    );
    await expect(repositoryOn(elsewhere, 'push').putManifest('v1', manifest)).rejects.toThrow(/HTTP 400 \(TAG_INVALID/);
  });
});

describe('Repository: what exists', () => {
  it('knows a repository does not exist only from 404 NAME_UNKNOWN on its tag list', async () => {
    const unknown = new FakeRegistry();
    expect(await repositoryOn(unknown).exists()).toBe(false);
    const other404 = new FakeRegistry().route('GET', `${HOST}/v2/team/app/tags/list`, () => ociError(404, 'NOT_FOUND', 'x'));
    expect(await repositoryOn(other404).exists()).toBe(true);
    const refused = new FakeRegistry().route('GET', `${HOST}/v2/team/app/tags/list`, () => ociError(403, 'DENIED', 'no'));
    expect(await repositoryOn(refused).exists()).toBe(true);
  });

  it('reads the referrers API, and takes a registry without one for what it is', async () => {
    const subject = `sha256:${'d'.repeat(64)}`;
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociIndex,
      manifests: [{ mediaType: 'x', digest: manifestDigest, size: 1 }],
    };
    const listing = new FakeRegistry().route('GET', `${HOST}/v2/team/app/referrers/${subject}`, () =>
      Response.json(index, { headers: { 'content-type': MEDIA_TYPES.ociIndex } }),
    );
    expect((await repositoryOn(listing).referrers(subject))?.map((d) => d.digest)).toEqual([manifestDigest]);
    const older = new FakeRegistry().route('GET', `${HOST}/v2/team/app/referrers/${subject}`, () =>
      ociError(405, 'UNSUPPORTED', 'no'),
    );
    expect(await repositoryOn(older).referrers(subject)).toBeUndefined();
    const html = new FakeRegistry().route(
      'GET',
      `${HOST}/v2/team/app/referrers/${subject}`,
      () => new Response('<html>', { headers: { 'content-type': 'text/html' } }),
    );
    expect(await repositoryOn(html).referrers(subject)).toBeUndefined();
  });
});

describe('Repository: blobs', () => {
  it('mounts with pull access on the other repository, or starts a session at the location given', async () => {
    const digest = `sha256:${'e'.repeat(64)}`;
    const registry = new FakeRegistry().route('POST', `${HOST}/v2/team/app/blobs/uploads/`, (request) =>
      request.url.searchParams.get('mount') === digest
        ? new Response(null, { status: 201 })
        : new Response(null, { status: 202, headers: { location: '/v2/team/app/blobs/uploads/abc?state=1' } }),
    );
    const repository = repositoryOn(registry, 'push');
    expect(await repository.startUpload('blob', { digest, from: 'other/app' })).toEqual({ mounted: true });
    expect(await repository.startUpload('blob')).toEqual({ mounted: false, location: '/v2/team/app/blobs/uploads/abc?state=1' });
    expect(registry.sentTo(HOST)[0]).toBe(
      `POST /v2/team/app/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=other%2Fapp`,
    );
  });

  it('finishes an upload at the opaque location, keeping its query and adding the digest', async () => {
    const digest = `sha256:${'f'.repeat(64)}`;
    const registry = new FakeRegistry().route(
      'PUT',
      `${HOST}/v2/team/app/blobs/uploads/abc`,
      () => new Response(null, { status: 201 }),
    );
    await repositoryOn(registry, 'push').finishUpload(
      '/v2/team/app/blobs/uploads/abc?state=1',
      digest,
      2,
      new Uint8Array(2),
      'blob',
    );
    expect(registry.sentTo(HOST)).toEqual([`PUT /v2/team/app/blobs/uploads/abc?state=1&digest=${encodeURIComponent(digest)}`]);
    expect(registry.requests[0]!.headers['content-length']).toBe('2');
  });
});

describe('Repository: scopes are bound once', () => {
  it('asks pull for a source and pull,push for a backup, plus pull on a mount source', async () => {
    const scopes: string[][] = [];
    const registry = new FakeRegistry()
      .route('GET', 'auth.example/token', (request) => {
        scopes.push(request.url.searchParams.getAll('scope'));
        return Response.json({ token: 't', expires_in: 300 });
      })
      .on((request) =>
        request.headers.authorization === undefined
          ? ociError(401, 'UNAUTHORIZED', 'auth', {
              'www-authenticate': 'Bearer realm="https://auth.example/token",service="registry"',
            })
          : undefined,
      )
      .route('HEAD', /\/manifests\//, () => new Response(null, { status: 404 }))
      .route('POST', /\/blobs\/uploads\/$/, () => new Response(null, { status: 201 }));
    await repositoryOn(registry, 'pull').hasManifest(manifestDigest);
    await repositoryOn(registry, 'push', 'backup/app').hasManifest(manifestDigest);
    await repositoryOn(registry, 'push', 'backup/app').startUpload('blob', { digest: manifestDigest, from: 'backup/other' });
    expect(scopes).toEqual([
      ['repository:team/app:pull'],
      ['repository:backup/app:pull,push'],
      ['repository:backup/app:pull,push', 'repository:backup/other:pull'],
    ]);
  });
});
