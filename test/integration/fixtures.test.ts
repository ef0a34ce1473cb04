// Proves the test fixtures themselves against the real registry (distribution 2.8) and skopeo,
// so that tests of the copy engine can trust them.
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync, gzipSync, zstdDecompressSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy } from '../../testbed/fault-proxy.ts';
import { startHostileRegistry } from '../../testbed/hostile-registry.ts';
import {
  dockerImage,
  dockerManifestList,
  fetchBlob,
  fetchManifest,
  foreignLayerImage,
  manyLayersImage,
  MediaTypes,
  ociImage,
  ociIndexWithAttestations,
  prettyPrintedImage,
  pushImage,
  randomLayersImage,
  referrersTag,
  referrersTagIndex,
  registrySession,
  sha256Digest,
  signatureArtifact,
  SIGNATURE_ARTIFACT_TYPE,
  zstdImage,
  type Descriptor,
  type TestImage,
} from '../../testbed/images.ts';
import { blobDataPath, corruptBlob, startRegistry, type Registry } from '../../testbed/registry.ts';
import type { TokenIssuer } from '../../testbed/token-issuer.ts';

const execFileAsync = promisify(execFile);

interface ManifestJson {
  mediaType?: string;
  artifactType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
  subject?: Descriptor;
}

function parse(image: TestImage, digest = image.root.digest): ManifestJson {
  const manifest = image.manifests.find((m) => m.digest === digest);
  if (!manifest) throw new Error(`no manifest ${digest}`);
  return JSON.parse(new TextDecoder().decode(manifest.bytes)) as ManifestJson;
}

async function skopeoCopy(source: string, destination: string, extra: string[] = []): Promise<void> {
  await execFileAsync(
    'skopeo',
    [
      'copy',
      '--all',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      ...extra,
      `docker://${source}`,
      `docker://${destination}`,
    ],
    { timeout: 60_000 },
  );
}

/**
 * GETs with node:http, counting body bytes until the body ends or the connection fails. (fetch
 * is no good here: an errored web stream discards chunks that arrived but were not read yet.)
 */
function getCounting(url: string): Promise<{ status: number; contentLength?: string; received: number; error?: Error }> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, (res) => {
      let received = 0;
      const done = (error?: Error): void =>
        resolve({ status: res.statusCode ?? 0, contentLength: res.headers['content-length'], received, error });
      res.on('data', (chunk: Buffer) => (received += chunk.length));
      res.on('end', () => done());
      res.on('error', (error) => done(error));
    });
    req.on('error', reject);
  });
}

let anonymous: Registry;
let basic: Registry;
let token: Registry;
let issuer: TokenIssuer;

beforeAll(async () => {
  [anonymous, basic, token] = await Promise.all([
    startRegistry({ allowForeignUrls: true }),
    startRegistry({ auth: 'htpasswd' }),
    startRegistry({ auth: 'token' }),
  ]);
  issuer = token.issuer!;
});

afterAll(async () => {
  await Promise.all([anonymous?.stop(), basic?.stop(), token?.stop()]);
});

describe('image builders, pushed to a real registry and read back', () => {
  const catalogue: Array<[string, () => TestImage, (image: TestImage) => void]> = [
    [
      'Docker schema2 image',
      () => dockerImage('docker'),
      (image) => {
        expect(image.root.mediaType).toBe(MediaTypes.dockerManifest);
        expect(parse(image).config?.mediaType).toBe(MediaTypes.dockerConfig);
      },
    ],
    [
      'OCI image',
      () => ociImage('oci'),
      (image) => {
        expect(image.root.mediaType).toBe(MediaTypes.ociManifest);
      },
    ],
    [
      'Docker manifest list',
      () => dockerManifestList('list'),
      (image) => {
        const list = parse(image);
        expect(list.mediaType).toBe(MediaTypes.dockerManifestList);
        expect(list.manifests?.map((m) => `${m.platform?.os}/${m.platform?.architecture}`)).toEqual([
          'linux/amd64',
          'linux/arm64',
          'linux/arm',
        ]);
        expect(image.manifests).toHaveLength(4);
      },
    ],
    [
      'OCI index with attestations',
      () => ociIndexWithAttestations('attested'),
      (image) => {
        const entries = parse(image).manifests ?? [];
        const attestations = entries.filter((m) => m.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest');
        expect(attestations).toHaveLength(3);
        for (const attestation of attestations) {
          expect(attestation.platform).toEqual({ architecture: 'unknown', os: 'unknown' });
          const subject = attestation.annotations!['vnd.docker.reference.digest'];
          expect(entries.some((m) => m.digest === subject && m.platform?.os === 'linux')).toBe(true);
          const layers = parse(image, attestation.digest).layers ?? [];
          expect(new Set(layers.map((l) => l.mediaType))).toEqual(new Set([MediaTypes.inToto]));
        }
      },
    ],
    [
      '60 small layers',
      () => manyLayersImage('many'),
      (image) => {
        const layers = parse(image).layers ?? [];
        expect(layers).toHaveLength(60);
        // A 4 KiB file, plus the tar header and end blocks and the gzip framing.
        expect(layers.every((l) => l.size === layers[0]!.size && l.size < 6 * 1024)).toBe(true);
      },
    ],
    [
      'foreign layer',
      () => foreignLayerImage('foreign'),
      (image) => {
        const [foreign] = parse(image).layers ?? [];
        expect(foreign?.mediaType).toBe(MediaTypes.dockerForeignLayer);
        expect(foreign?.urls?.[0]).toMatch(/^https:\/\//);
        expect(image.foreignLayers).toEqual([foreign]);
        expect(image.blobs.some((b) => b.digest === foreign?.digest)).toBe(false);
      },
    ],
    [
      'zstd layers',
      () => zstdImage('zstd'),
      (image) => {
        const layers = parse(image).layers ?? [];
        expect(new Set(layers.map((l) => l.mediaType))).toEqual(new Set([MediaTypes.ociZstdLayer]));
      },
    ],
    [
      'pretty-printed manifests',
      () => prettyPrintedImage('pretty'),
      (image) => {
        for (const manifest of image.manifests) {
          const text = new TextDecoder().decode(manifest.bytes);
          expect(text).toContain('\n   "');
          const reserialised = new TextEncoder().encode(JSON.stringify(JSON.parse(text)));
          expect(sha256Digest(reserialised)).not.toBe(manifest.digest);
        }
      },
    ],
    [
      'incompressible random layers',
      () => randomLayersImage('random', { count: 3, size: 1024 * 1024 }),
      (image) => {
        const layers = parse(image).layers ?? [];
        expect(layers.every((l) => l.size > 1024 * 1024 && l.size < 1024 * 1024 + 4096)).toBe(true);
        expect(new Set(layers.map((l) => l.digest)).size).toBe(3);
        const layer = image.blobs.find((b) => b.digest === layers[0]?.digest)!;
        // Only the tar header and padding compress.
        expect(gzipSync(layer.bytes).length).toBeGreaterThan(layer.bytes.length * 0.99);
      },
    ],
  ];

  it.each(catalogue)('%s', async (name, build, check) => {
    const image = build();
    check(image);
    // Deterministic: the same seed gives the same bytes.
    expect(build().root.digest).toBe(image.root.digest);
    expect(image.manifests.at(-1)?.digest).toBe(image.root.digest);

    const repo = `fixtures/${name.replaceAll(/[^a-z0-9]+/gi, '-').toLowerCase()}`;
    await pushImage(anonymous.host, repo, image, { tag: 'v1' });

    for (const manifest of image.manifests) {
      const got = await fetchManifest(anonymous.url, repo, manifest.digest);
      expect(got.status).toBe(200);
      expect(got.headers.get('content-type')).toBe(manifest.mediaType);
      expect(got.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(sha256Digest(got.bytes)).toBe(manifest.digest);
      expect(Buffer.from(got.bytes).equals(manifest.bytes)).toBe(true);
    }
    const tagged = await fetchManifest(anonymous.url, repo, 'v1');
    expect(tagged.headers.get('docker-content-digest')).toBe(image.root.digest);
    for (const blob of image.blobs) {
      const got = await fetchBlob(anonymous.url, repo, blob.digest);
      expect(got.status).toBe(200);
      expect(sha256Digest(got.bytes)).toBe(blob.digest);
    }
    // Layers are real archives: each unframes to the tar its config lists as diff_id.
    for (const manifest of image.manifests) {
      const { config, layers = [] } = parse(image, manifest.digest);
      const blob = config && image.blobs.find((b) => b.digest === config.digest);
      if (!blob || config.mediaType === MediaTypes.ociEmpty) continue;
      const diffIds = (JSON.parse(new TextDecoder().decode(blob.bytes)) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids;
      expect(diffIds).toHaveLength(layers.length);
      layers.forEach((layer, i) => {
        const bytes = image.blobs.find((b) => b.digest === layer.digest)?.bytes;
        if (!bytes || layer.mediaType === MediaTypes.inToto) return;
        const tar = layer.mediaType.endsWith('zstd') ? zstdDecompressSync(bytes) : gunzipSync(bytes);
        expect(sha256Digest(tar)).toBe(diffIds[i]);
      });
    }
    for (const foreign of image.foreignLayers) {
      const head = await fetch(`${anonymous.url}/v2/${repo}/blobs/${foreign.digest}`, { method: 'HEAD' });
      expect(head.status).toBe(404);
    }
  });

  it('signature artifact with subject, and the sha256-<hex> referrers tag index', async () => {
    const subject = ociImage('signed');
    const signature = signatureArtifact('signature', subject.root);
    const body = parse(signature);
    expect(body.artifactType).toBe(SIGNATURE_ARTIFACT_TYPE);
    expect(body.subject).toEqual(subject.root);
    expect(body.config?.mediaType).toBe(MediaTypes.ociEmpty);

    const repo = 'fixtures/signed';
    await pushImage(anonymous.host, repo, subject, { tag: 'v1' });
    await pushImage(anonymous.host, repo, signature);
    const fallback = referrersTagIndex([signature]);
    const tag = referrersTag(subject.root.digest);
    expect(tag).toMatch(/^sha256-[0-9a-f]{64}$/);
    await pushImage(anonymous.host, repo, fallback, { tag });

    const got = await fetchManifest(anonymous.url, repo, tag);
    expect(got.headers.get('docker-content-digest')).toBe(fallback.root.digest);
    const listed = (JSON.parse(new TextDecoder().decode(got.bytes)) as ManifestJson).manifests ?? [];
    expect(listed).toEqual([expect.objectContaining({ digest: signature.root.digest, artifactType: SIGNATURE_ARTIFACT_TYPE })]);
    const stored = await fetchManifest(anonymous.url, repo, signature.root.digest);
    expect(Buffer.from(stored.bytes).equals(signature.manifests[0]!.bytes)).toBe(true);
    // distribution 2.8 has no referrers API: clients must fall back to the tag schema.
    const referrers = await fetch(`${anonymous.url}/v2/${repo}/referrers/${subject.root.digest}`);
    expect(referrers.status).toBe(404);
  });

  it('a registry without allowForeignUrls refuses foreign layers', async () => {
    const image = foreignLayerImage('refused');
    await expect(pushImage(basic.host, 'fixtures/foreign', image, { credentials: basic.credentials })).rejects.toThrow(
      /MANIFEST_BLOB_UNKNOWN/,
    );
  });

  it('a manifest GET by tag without the Accept list gets something else', async () => {
    const repo = 'fixtures/accept';
    await pushImage(anonymous.host, repo, ociImage('accept-oci'), { tag: 'oci' });
    const docker = dockerImage('accept-docker');
    await pushImage(anonymous.host, repo, docker, { tag: 'docker' });
    // OCI: 404 MANIFEST_UNKNOWN ("OCI manifest found, but accept header does not support …").
    expect((await fetch(`${anonymous.url}/v2/${repo}/manifests/oci`)).status).toBe(404);
    // Docker schema2: converted on the fly to a signed schema1 manifest, another digest.
    const converted = await fetch(`${anonymous.url}/v2/${repo}/manifests/docker`);
    expect(converted.status).toBe(200);
    expect(converted.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.v1+prettyjws');
    expect(converted.headers.get('docker-content-digest')).not.toBe(docker.root.digest);
  });
});

describe('htpasswd registry', () => {
  it('challenges with Basic and accepts only the generated user', async () => {
    const anonymousRes = await fetch(`${basic.url}/v2/`);
    expect(anonymousRes.status).toBe(401);
    expect(anonymousRes.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
    const { username, password } = basic.credentials!;
    const withAuth = (p: string): Promise<Response> =>
      fetch(`${basic.url}/v2/`, { headers: { authorization: `Basic ${Buffer.from(`${username}:${p}`).toString('base64')}` } });
    expect((await withAuth(password)).status).toBe(200);
    expect((await withAuth(`${password}x`)).status).toBe(401);
  });

  it('skopeo copies an index from the anonymous registry into it, digest-exact', async () => {
    const image = ociIndexWithAttestations('skopeo-basic');
    await pushImage(anonymous.host, 'source/basic', image, { tag: 'v1' });
    const { username, password } = basic.credentials!;
    await skopeoCopy(`${anonymous.host}/source/basic:v1`, `${basic.host}/copied/basic:v1`, [
      '--dest-creds',
      `${username}:${password}`,
    ]);
    const session = registrySession(basic.url, { credentials: basic.credentials });
    for (const manifest of image.manifests) {
      const got = await fetchManifest(session, 'copied/basic', manifest.digest);
      expect(Buffer.from(got.bytes).equals(manifest.bytes)).toBe(true);
    }
    expect((await fetchManifest(session, 'copied/basic', 'v1')).headers.get('docker-content-digest')).toBe(image.root.digest);
  });
});

describe('token registry and issuer', () => {
  const reset = (): void => {
    issuer.requests.length = 0;
  };

  it('skopeo copies into it; the issuer records the push scope and the account', async () => {
    const image = dockerManifestList('skopeo-token');
    await pushImage(anonymous.host, 'source/token', image, { tag: 'v1' });
    reset();
    const { username, password } = issuer.credentials;
    await skopeoCopy(`${anonymous.host}/source/token:v1`, `${token.host}/copied/token:v1`, [
      '--dest-creds',
      `${username}:${password}`,
    ]);
    expect(issuer.requests.length).toBeGreaterThan(0);
    expect(issuer.requests.every((r) => r.authenticated && r.user === username && r.status === 200)).toBe(true);
    expect(issuer.requests.some((r) => r.scopes.includes('repository:copied/token:pull,push') && r.account === username)).toBe(
      true,
    );
    const got = await fetchManifest(token.url, 'copied/token', 'v1', { credentials: issuer.credentials });
    expect(got.headers.get('docker-content-digest')).toBe(image.root.digest);
  });

  it('skopeo within the registry asks for source pull and mounts', async () => {
    const image = ociImage('mounted');
    await pushImage(anonymous.host, 'mount/origin', image, { tag: 'v1' });
    const creds = `${issuer.credentials.username}:${issuer.credentials.password}`;
    // skopeo mounts only blobs its blob-info cache has seen in the registry: it records them
    // when it pushes, so the source repository is filled by skopeo, not by pushImage.
    await skopeoCopy(`${anonymous.host}/mount/origin:v1`, `${token.host}/mount/source:v1`, ['--dest-creds', creds]);
    reset();
    await skopeoCopy(`${token.host}/mount/source:v1`, `${token.host}/mount/destination:v1`, [
      '--src-creds',
      creds,
      '--dest-creds',
      creds,
    ]);
    const mountScopes = issuer.requests.find(
      (r) => r.scopes.includes('repository:mount/source:pull') && r.scopes.includes('repository:mount/destination:pull,push'),
    );
    expect(mountScopes?.granted).toEqual([
      { type: 'repository', name: 'mount/destination', actions: ['pull', 'push'] },
      { type: 'repository', name: 'mount/source', actions: ['pull'] },
    ]);
    // The access log line: "POST /v2/mount/destination/blobs/uploads/?from=mount%2Fsource&mount=sha256%3A… HTTP/1.1" 201
    expect(token.logs()).toMatch(
      /"POST \/v2\/mount\/destination\/blobs\/uploads\/\?from=mount%2Fsource&mount=sha256%3A[0-9a-f]{64} HTTP\/1.1" 201/,
    );
  });

  it('challenges with Bearer and the scope; anonymous tokens grant nothing', async () => {
    const res = await fetch(`${token.url}/v2/any/repo/manifests/latest`, { headers: { accept: MediaTypes.ociManifest } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(
      `Bearer realm="${issuer.realm}",service="${issuer.service}",scope="repository:any/repo:pull"`,
    );
    const anonymousToken = await fetch(`${issuer.realm}?service=${issuer.service}&scope=repository:any/repo:pull`);
    const body = (await anonymousToken.json()) as { token: string; access_token: string; expires_in: number; issued_at: string };
    expect(body.token).toBe(body.access_token);
    expect(body.expires_in).toBe(300);
    expect(issuer.requests.at(-1)).toMatchObject({ authenticated: false, granted: [] });
  });

  it('refuses an expired token and accepts a fresh one', async () => {
    const access = [{ type: 'repository', name: 'fixtures/expiry', actions: ['pull'] }];
    const tryToken = async (t: string): Promise<number> =>
      (await fetch(`${token.url}/v2/fixtures/expiry/tags/list`, { headers: { authorization: `Bearer ${t}` } })).status;
    // 404: authorised, the repository does not exist.
    expect(await tryToken(issuer.mint(access))).toBe(404);
    expect(await tryToken(issuer.mint(access, { lifetimeSeconds: -120 }))).toBe(401);
    // The registry allows 60 s of skew past exp (bounds chosen far from the edge, so load
    // cannot make this flaky).
    expect(await tryToken(issuer.mint(access, { lifetimeSeconds: -50 }))).toBe(404);
    expect(await tryToken(issuer.mint(access, { lifetimeSeconds: -70 }))).toBe(401);

    // The same through /token, as a client would get it.
    issuer.lifetimeSeconds = -120;
    try {
      const session = registrySession(token.url, { credentials: issuer.credentials });
      const res = await session.fetch('/v2/fixtures/expiry/tags/list');
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toContain('error="invalid_token"');
    } finally {
      issuer.lifetimeSeconds = 300;
    }
  });

  it('applies per-user rules: a pull-only user cannot push', async () => {
    const reader = { username: 'reader', password: 'reader-password' };
    issuer.addUser(reader);
    const previous = issuer.policy;
    issuer.policy = (user, requested) =>
      user === 'reader' ? requested.actions.filter((a) => a === 'pull') : previous(user, requested);
    try {
      const image = dockerImage('rules');
      await pushImage(token.url, 'fixtures/rules', image, { tag: 'v1', credentials: issuer.credentials });
      reset();
      const got = await fetchManifest(token.url, 'fixtures/rules', 'v1', { credentials: reader });
      expect(got.status).toBe(200);
      await expect(pushImage(token.url, 'fixtures/rules', dockerImage('rules-2'), { credentials: reader })).rejects.toThrow(
        /401/,
      );
      const readerRequests = issuer.requests.filter((r) => r.user === 'reader');
      // distribution names a challenge's actions in map order: 'pull,push' or 'push,pull'.
      const asked = readerRequests.flatMap((r) => r.scopes).map((s) => s.replace(/push,pull$/, 'pull,push'));
      expect(asked).toContain('repository:fixtures/rules:pull,push');
      expect(readerRequests.flatMap((r) => r.granted)).toEqual(
        readerRequests.map(() => ({ type: 'repository', name: 'fixtures/rules', actions: ['pull'] })),
      );
    } finally {
      issuer.policy = previous;
    }
  });

  it('issues tokens by OAuth2 POST, with refresh tokens', async () => {
    const { username, password } = issuer.credentials;
    const post = (form: Record<string, string>): Promise<Response> =>
      fetch(issuer.realm, {
        method: 'POST',
        body: new URLSearchParams({ service: issuer.service, client_id: 'fixtures', ...form }),
      });
    const scope = 'repository:fixtures/oauth:pull,push';
    const first = (await (await post({ grant_type: 'password', username, password, scope, access_type: 'offline' })).json()) as {
      access_token: string;
      refresh_token: string;
    };
    expect(first.refresh_token).toBeTruthy();
    const second = await post({ grant_type: 'refresh_token', refresh_token: first.refresh_token, scope });
    expect(second.status).toBe(200);
    const { access_token } = (await second.json()) as { access_token: string };
    const res = await fetch(`${token.url}/v2/fixtures/oauth/tags/list`, { headers: { authorization: `Bearer ${access_token}` } });
    expect(res.status).toBe(404);
    expect((await post({ grant_type: 'password', username, password: 'wrong', scope })).status).toBe(401);
  });
});

describe('corruptBlob', () => {
  it('makes the registry serve bytes that do not hash to the digest', async () => {
    const image = dockerImage('corrupt', { layerSize: 64 * 1024 });
    await pushImage(anonymous.host, 'fixtures/corrupt', image);
    const layer = image.blobs[1]!;
    await corruptBlob(anonymous, layer.digest);
    const got = await fetchBlob(anonymous.url, 'fixtures/corrupt', layer.digest);
    expect(got.status).toBe(200);
    expect(got.bytes.length).toBe(layer.bytes.length);
    expect(sha256Digest(got.bytes)).not.toBe(layer.digest);
    // The registry does not re-hash on read: it still vouches for the original digest.
    expect(got.headers.get('docker-content-digest')).toBe(layer.digest);

    await corruptBlob(anonymous, layer.digest, new Uint8Array([1, 2, 3]));
    const short = await fetchBlob(anonymous.url, 'fixtures/corrupt', layer.digest);
    expect(short.headers.get('content-length')).toBe('3');
    expect(blobDataPath(anonymous, layer.digest)).toContain(
      `/blobs/sha256/${layer.digest.slice(7, 9)}/${layer.digest.slice(7)}/data`,
    );
  });
});

describe('fault proxy', () => {
  let proxy: FaultProxy;
  const repo = 'fixtures/faults';
  const image = randomLayersImage('faults', { count: 1, size: 256 * 1024 });
  const layer = image.blobs[1]!;

  beforeAll(async () => {
    proxy = await startFaultProxy(anonymous.url);
    await pushImage(anonymous.host, repo, image, { tag: 'v1' });
  });
  afterAll(() => proxy?.stop());

  it('answers 429 with Retry-After for the next N matching requests', async () => {
    const rule = proxy.addRule({
      method: 'GET',
      path: /\/manifests\//,
      times: 2,
      fault: { kind: 'status', status: 429, retryAfterSeconds: 7 },
    });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${proxy.url}/v2/${repo}/manifests/v1`, { headers: { accept: MediaTypes.ociManifest } });
      statuses.push(res.status);
      if (res.status === 429) expect(res.headers.get('retry-after')).toBe('7');
      await res.arrayBuffer();
    }
    expect(statuses).toEqual([429, 429, 200]);
    expect(rule.fired).toBe(2);
    // Other methods do not match.
    expect(
      (await fetch(`${proxy.url}/v2/${repo}/manifests/v1`, { method: 'HEAD', headers: { accept: MediaTypes.ociManifest } }))
        .status,
    ).toBe(200);
  });

  it('answers a burst of 503s, then forwards', async () => {
    proxy.addRule({ path: /\/blobs\//, times: 3, fault: { kind: 'status', status: 503 } });
    const before = { ...proxy.stats };
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${proxy.url}/v2/${repo}/blobs/${layer.digest}`, { method: 'HEAD' });
      statuses.push(res.status);
    }
    expect(statuses).toEqual([503, 503, 503, 200]);
    expect(proxy.stats.faulted - before.faulted).toBe(3);
    expect(proxy.stats.forwarded - before.forwarded).toBe(1);
  });

  it('drops the connection mid-blob after K bytes', async () => {
    proxy.addRule({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}`), fault: { kind: 'drop', afterBytes: 100_000 } });
    const cut = await getCounting(`${proxy.url}/v2/${repo}/blobs/${layer.digest}`);
    expect(cut).toMatchObject({ status: 200, contentLength: String(layer.bytes.length), received: 100_000 });
    expect(cut.error).toBeDefined();
    // The next request is forwarded whole.
    const again = await fetchBlob(proxy.url, repo, layer.digest);
    expect(sha256Digest(again.bytes)).toBe(layer.digest);
  });

  it('drops right after the headers, and hangs up without answering', async () => {
    proxy.addRule({ method: 'GET', path: /\/blobs\//, fault: { kind: 'drop', afterBytes: 0 } });
    const cut = await getCounting(`${proxy.url}/v2/${repo}/blobs/${layer.digest}`);
    expect(cut).toMatchObject({ status: 200, received: 0, error: expect.anything() });

    proxy.addRule({ path: /^\/v2\/$/, fault: { kind: 'hangup' } });
    await expect(fetch(`${proxy.url}/v2/`)).rejects.toThrow();
  });

  it('adds latency', async () => {
    proxy.addRule({ path: /^\/v2\/$/, fault: { kind: 'delay', ms: 300 } });
    const started = performance.now();
    expect((await fetch(`${proxy.url}/v2/`)).status).toBe(200);
    expect(performance.now() - started).toBeGreaterThanOrEqual(295);
    expect(proxy.requests.at(-1)).toMatchObject({ url: '/v2/', fault: 'delay', status: 200 });
  });

  it('stays in the path of an upload (Host is preserved) and fails a PUT cleanly', async () => {
    const pushed = ociImage('through-proxy', { layerSize: 512 * 1024 });
    proxy.addRule({ method: 'PUT', path: /\/blobs\/uploads\//, fault: { kind: 'status', status: 503 } });
    await expect(pushImage(proxy.url, 'fixtures/proxied', pushed)).rejects.toThrow(/PUT blob .*got 503/);
    proxy.requests.length = 0;
    await pushImage(proxy.url, 'fixtures/proxied', pushed, { tag: 'v1' });
    const puts = proxy.requests.filter((r) => r.method === 'PUT' && r.url.includes('/blobs/uploads/'));
    expect(puts).toHaveLength(pushed.blobs.length);
    expect(puts.every((r) => r.status === 201)).toBe(true);
    const got = await fetchManifest(anonymous.url, 'fixtures/proxied', 'v1');
    expect(got.headers.get('docker-content-digest')).toBe(pushed.root.digest);
  });
});

describe('registry process', () => {
  it('dies with the process that started it, even on SIGKILL', async () => {
    const script = `
      import { startRegistry } from ${JSON.stringify(new URL('../../testbed/registry.ts', import.meta.url).pathname)};
      const registry = await startRegistry();
      console.log(JSON.stringify({ url: registry.url, storageDir: registry.storageDir }));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    const { url, storageDir } = JSON.parse(line.toString()) as { url: string; storageDir: string };
    expect((await fetch(`${url}/v2/`)).status).toBe(200);
    child.kill('SIGKILL');
    await once(child, 'exit');
    await expect
      .poll(
        () =>
          fetch(`${url}/v2/`).then(
            () => 'up',
            () => 'down',
          ),
        { timeout: 5000 },
      )
      .toBe('down');
    await rm(dirname(storageDir), { recursive: true, force: true }); // the killed process could not
  });
});

describe('hostile registry', () => {
  it('records what reaches its internal service (the tests that find nothing there rely on it)', async () => {
    const hostile = await startHostileRegistry();
    try {
      const answer = await fetch(`http://${hostile.internalHost}/latest/meta-data/`, { headers: { authorization: 'Bearer x' } });
      expect(await answer.text()).toContain('ADMIN CONSOLE');
      expect(hostile.internalRequests).toEqual([{ method: 'GET', url: '/latest/meta-data/', authorization: 'Bearer x' }]);
    } finally {
      await hostile.stop();
    }
  });
});
