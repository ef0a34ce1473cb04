// The clone scenarios every runtime must pass, against real registries: an anonymous source behind
// a fault-injecting proxy, and a backup with Docker-Hub-style token auth and the flat layout.
// Included by clone-node.test.ts and clone-worker.test.ts.

import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  backupLocation,
  backupReference,
  parseReference,
  repositoryName,
  type CloneResult,
} from '../../functions/contract/index.ts';
import type { CloneFunction, FunctionEnv } from '../../testbed/clone-function.ts';
import { startFaultProxy, type FaultProxy } from '../../testbed/fault-proxy.ts';
import { freePort } from '../../testbed/ports.ts';
import { VERSION } from '../../functions/version.ts';
import {
  cosignSignature,
  cosignTag,
  dockerImage,
  dockerManifestList,
  fetchBlob,
  fetchManifest,
  foreignLayerImage,
  manyLayersImage,
  ociImage,
  ociIndexWithAttestations,
  prettyPrintedImage,
  pushBlob,
  pushImage,
  referrersTag,
  referrersTagIndex,
  registrySession,
  sha256Digest,
  signatureArtifact,
  zstdImage,
  type RegistrySession,
  type TestImage,
} from '../../testbed/images.ts';
import { startReferrersProxy, type ReferrersProxy } from '../../testbed/referrers-proxy.ts';
import { corruptBlob, startRegistry, type Registry } from '../../testbed/registry.ts';
import { credentialForms, expectCredentialsNotLogged } from '../support/logs.ts';

export const NAMESPACE = 'backupacct';
const CALLBACK_SECRET = 'callback-secret-of-the-clone-tests';

/** One entry of the function's `results`, as the engine reports it. */
export type Result = CloneResult;

export function describeCloneScenarios(runtime: string, start: (env: FunctionEnv) => Promise<CloneFunction>): void {
  describe(`clone scenarios (${runtime})`, () => {
    let source: Registry;
    let proxy: FaultProxy;
    /** The source registry again, with the OCI referrers API (testbed/referrers-proxy.ts). */
    let sourceReferrers: ReferrersProxy;
    let backup: Registry;
    let backupSession: RegistrySession;
    let fn: CloneFunction;
    /** Where the callback test's receiver listens: the function's only allowed callback origin. */
    let callbackPort: number;
    const location = () => backupLocation(backup.host, NAMESPACE, { layout: 'flat' });

    beforeAll(async () => {
      callbackPort = await freePort();
      [source, backup] = await Promise.all([
        startRegistry({ auth: 'none', allowForeignUrls: true }),
        startRegistry({ auth: 'token', allowForeignUrls: true }),
      ]);
      proxy = await startFaultProxy(source.url);
      sourceReferrers = await startReferrersProxy(source.url);
      backupSession = registrySession(backup.url, { credentials: backup.credentials! });
      fn = await start({
        BACKUP_REGISTRY: backup.host,
        BACKUP_NAMESPACE: NAMESPACE,
        BACKUP_LAYOUT: 'flat',
        INSECURE_REGISTRIES: `${proxy.host},${sourceReferrers.host},${backup.host}`,
        REGISTRY_AUTH_JSON: JSON.stringify({ auths: { [backup.host]: backup.credentials } }),
        CALLBACK_SECRET,
        CALLBACK_ORIGINS: `http://127.0.0.1:${callbackPort}`,
      });
    });

    afterAll(async () => {
      await fn?.stop();
      await proxy?.stop();
      await sourceReferrers?.stop();
      await Promise.all([source?.stop(), backup?.stop()]);
    });

    /** Seeds the source through the registry's own port (no faults), returns the reference. */
    async function seed(repo: string, image: TestImage, tag = 'v1'): Promise<string> {
      await pushImage(source.url, repo, image, { tag });
      return `${proxy.host}/${repo}:${tag}`;
    }

    /** A second function whose backup registry is reached at `backupHost` (a proxy of the backup). */
    async function startWithBackupAt(backupHost: string): Promise<CloneFunction> {
      return start({
        BACKUP_REGISTRY: backupHost,
        BACKUP_NAMESPACE: NAMESPACE,
        BACKUP_LAYOUT: 'flat',
        INSECURE_REGISTRIES: `${proxy.host},${sourceReferrers.host},${backupHost}`,
        REGISTRY_AUTH_JSON: JSON.stringify({ auths: { [backupHost]: backup.credentials } }),
      });
    }

    /** A second function whose backup is reached through a fault proxy of its own (to refuse or count requests). */
    async function startBehindBackupProxy(): Promise<{ proxy: FaultProxy; fn: CloneFunction }> {
      const backupProxy = await startFaultProxy(backup.url);
      return { proxy: backupProxy, fn: await startWithBackupAt(backupProxy.host) };
    }

    async function clone(images: string[]): Promise<Result[]> {
      const response = await fn.clone({ images });
      expect(response.status, JSON.stringify(response.body)).toBe(200);
      return response.body.results;
    }

    function expectedTarget(reference: string) {
      const target = backupReference(parseReference(reference), location());
      return { repository: target.repository, tag: target.tag!, name: repositoryName(target) };
    }

    /** Every manifest hashes to its digest in the backup, every blob is there, foreign ones are not. */
    async function expectBackedUp(image: TestImage, reference: string, result: Result): Promise<void> {
      const target = expectedTarget(reference);
      expect(result.status, result.error).not.toBe('failed');
      expect(result.digest).toBe(image.root.digest);
      expect(result.target).toBe(`${target.name}:${target.tag}@${image.root.digest}`);
      for (const manifest of image.manifests) {
        const fetched = await fetchManifest(backupSession, target.repository, manifest.digest);
        expect(fetched.status).toBe(200);
        expect(sha256Digest(fetched.bytes)).toBe(manifest.digest);
        expect(fetched.headers.get('content-type')).toBe(manifest.mediaType);
      }
      for (const blob of image.blobs) {
        const fetched = await fetchBlob(backupSession, target.repository, blob.digest);
        expect(fetched.status, blob.digest).toBe(200);
        expect(sha256Digest(fetched.bytes)).toBe(blob.digest);
      }
      for (const layer of image.foreignLayers) {
        const head = await backupSession.fetch(`/v2/${target.repository}/blobs/${layer.digest}`, { method: 'HEAD' });
        expect(head.status).toBe(404);
      }
      const tagged = await fetchManifest(backupSession, target.repository, target.tag);
      expect(sha256Digest(tagged.bytes)).toBe(image.root.digest);
    }

    /** Copies `reference`; the backup then holds the image, its signature, and a tag-scheme index listing only that. */
    async function expectCopiedWithTagIndex(image: TestImage, signature: TestImage, reference: string): Promise<void> {
      const [result] = await clone([reference]);
      await expectBackedUp(image, reference, result!);
      const { repository } = expectedTarget(reference);
      const copiedSignature = await fetchManifest(backupSession, repository, signature.root.digest);
      expect(sha256Digest(copiedSignature.bytes)).toBe(signature.root.digest);
      const tagIndex = await fetchManifest(backupSession, repository, referrersTag(image.root.digest));
      expect(tagIndex.status).toBe(200);
      const listed = JSON.parse(new TextDecoder().decode(tagIndex.bytes)) as { manifests: { digest: string }[] };
      expect(listed.manifests.map((m) => m.digest)).toEqual([signature.root.digest]);
    }

    const catalogue: Array<[string, () => TestImage]> = [
      ['a Docker manifest list with three platforms', () => dockerManifestList(`${runtime}-list`)],
      ['an OCI index with BuildKit attestation manifests', () => ociIndexWithAttestations(`${runtime}-attest`)],
      ['a single Docker schema2 manifest', () => dockerImage(`${runtime}-docker`)],
      ['a single OCI manifest', () => ociImage(`${runtime}-oci`)],
      ['60 small layers', () => manyLayersImage(`${runtime}-many`)],
      ['a foreign (non-distributable) layer', () => foreignLayerImage(`${runtime}-foreign`)],
      ['zstd layers', () => zstdImage(`${runtime}-zstd`)],
      ['pretty-printed manifests', () => prettyPrintedImage(`${runtime}-pretty`)],
    ];

    it.each(catalogue)('copies %s digest-exact, then finds it there', async (name, build) => {
      const image = build();
      const reference = await seed(
        `catalogue/${name
          .replace(/[^a-z0-9]+/gi, '-')
          .toLowerCase()
          .replace(/^-|-$/g, '')}`,
        image,
      );
      const [first] = await clone([reference]);
      await expectBackedUp(image, reference, first!);
      expect(first!.status).toBe('copied');
      expect(first!.bytes).toBeGreaterThan(0);
      const [second] = await clone([reference]);
      expect(second).toMatchObject({ status: 'exists', bytes: 0, digest: image.root.digest, target: first!.target });
    });

    it('logs the release it runs as it starts serving', () => {
      const started = fn
        .logs()
        .split('\n')
        .find((line) => line.includes('"version"'));
      expect(started, fn.logs().slice(0, 2000)).toBeDefined();
      expect(JSON.parse(started!.slice(started!.indexOf('{')))).toMatchObject({ version: VERSION, backupRegistry: backup.host });
    });

    it('keeps a deep repository path apart from its flattened look-alikes', async () => {
      const image = ociImage(`${runtime}-deep`);
      const deep = await seed('team/a/b-c/d/e/f', image);
      const lookalike = await seed('team/a-b/c/d/e/f', ociImage(`${runtime}-lookalike`));
      const [a, b] = await clone([deep, lookalike]);
      await expectBackedUp(image, deep, a!);
      const repositoryOf = (target: string) => target.replace(/:[^:/]+@sha256:[0-9a-f]+$/, '');
      expect(repositoryOf(a!.target!)).not.toBe(repositoryOf(b!.target!));
      expect(repositoryOf(b!.target!)).toMatch(/_team_a-b_c_d_e_f$/);
    });

    it('tags a digest-only source with a tag derived from its digest', async () => {
      const image = dockerImage(`${runtime}-by-digest`);
      await pushImage(source.url, 'bydigest/app', image);
      const reference = `${proxy.host}/bydigest/app@${image.root.digest}`;
      const [result] = await clone([reference]);
      await expectBackedUp(image, reference, result!);
      expect(result!.target).toContain(`:digest-sha256-${image.root.digest.slice(7)}@`);
    });

    it('copies a signature that refers to the image, with the referrers tag-scheme index', async () => {
      const image = ociImage(`${runtime}-signed`);
      const reference = await seed('signed/app', image);
      const signature = signatureArtifact(`${runtime}-sig`, image.root);
      const index = referrersTagIndex([signature]);
      await pushImage(source.url, 'signed/app', index, { tag: referrersTag(image.root.digest) });

      await expectCopiedWithTagIndex(image, signature, reference);
    });

    it("copies cosign's signature tag with the image, and its blobs", async () => {
      const image = ociImage(`${runtime}-cosigned`);
      const reference = await seed('cosigned/app', image);
      const signature = cosignSignature(`${runtime}-cosign`, image.root);
      const sigTag = cosignTag(image.root.digest, 'sig');
      await pushImage(source.url, 'cosigned/app', signature, { tag: sigTag });

      const [result] = await clone([reference]);
      await expectBackedUp(image, reference, result!);
      const { repository } = expectedTarget(reference);
      const copied = await fetchManifest(backupSession, repository, sigTag);
      expect(copied.status).toBe(200);
      expect(sha256Digest(copied.bytes)).toBe(signature.root.digest);
      for (const blob of signature.blobs) {
        expect((await fetchBlob(backupSession, repository, blob.digest)).status, blob.digest).toBe(200);
      }
    });

    it('copies the referrers a source lists through the referrers API: as a tag-scheme index into a backup without the API, as indexed manifests into one with it', async () => {
      const image = ociImage(`${runtime}-listed`);
      const signature = signatureArtifact(`${runtime}-listed-sig`, image.root);
      await pushImage(source.url, 'listed/app', image, { tag: 'v1' });
      // Through the referrers proxy, so that its API lists it; no tag-scheme index at the source.
      await pushImage(sourceReferrers.url, 'listed/app', signature);
      const reference = `${sourceReferrers.host}/listed/app:v1`;
      const tagIndexAtSource = await fetchManifest(registrySession(source.url), 'listed/app', referrersTag(image.root.digest));
      expect(tagIndexAtSource.status).toBe(404);

      // 1. The backup has no referrers API: the copy keeps a tag-scheme index there.
      await expectCopiedWithTagIndex(image, signature, reference);

      // 2. A backup with the API (a fresh repository behind a referrers proxy): it indexes the
      // signature itself, so no tag-scheme index is pushed.
      const backupReferrers = await startReferrersProxy(backup.url);
      const viaReferrers = await startWithBackupAt(backupReferrers.host);
      try {
        const other = ociImage(`${runtime}-listed-2`);
        const otherSignature = signatureArtifact(`${runtime}-listed-sig-2`, other.root);
        await pushImage(source.url, 'listed/other', other, { tag: 'v1' });
        await pushImage(sourceReferrers.url, 'listed/other', otherSignature);
        const otherReference = `${sourceReferrers.host}/listed/other:v1`;
        const [second] = (await viaReferrers.clone({ images: [otherReference] })).body.results as Result[];
        expect(second!.status, second!.error).toBe('copied');
        const otherRepository = expectedTarget(otherReference).repository;
        const session = registrySession(backupReferrers.url, { credentials: backup.credentials! });
        const answer = await session.fetch(`/v2/${otherRepository}/referrers/${other.root.digest}`);
        expect(answer.status).toBe(200);
        const index = (await answer.json()) as { manifests: { digest: string }[] };
        expect(index.manifests.map((m) => m.digest)).toEqual([otherSignature.root.digest]);
        expect((await fetchManifest(backupSession, otherRepository, referrersTag(other.root.digest))).status).toBe(404);
      } finally {
        await viaReferrers.stop();
        await backupReferrers.stop();
      }
    });

    it('fails an image whose blob does not match its digest, and pushes no manifest over it', async () => {
      // Small blobs are read whole and checked before their upload; larger ones are checked as
      // they stream: one corrupt image for each way.
      const images = [
        dockerImage(`${runtime}-corrupt-small`, { layers: 3, layerSize: 4 * 1024 }),
        dockerImage(`${runtime}-corrupt-large`, { layers: 3, layerSize: 256 * 1024 }),
      ];
      const references = [await seed('broken/small', images[0]!), await seed('broken/large', images[1]!)];
      for (const image of images) await corruptBlob(source, image.blobs.at(-1)!.digest);
      const good = await seed('fine/app', dockerImage(`${runtime}-fine`));
      const missing = `${proxy.host}/fine/app:no-such-tag`;

      const [corruptSmall, corruptLarge, fine, absent] = await clone([...references, good, missing]);
      for (const corrupt of [corruptSmall, corruptLarge]) {
        expect(corrupt!.status).toBe('failed');
        expect(corrupt!.error).toMatch(/does not match its digest/);
      }
      expect(fine!.status).toBe('copied');
      expect(absent).toMatchObject({ status: 'failed', source: missing, reason: 'source_not_found' });
      expect(absent!.error).toMatch(/not found/);
      // A blob that fails its digest is no statement about the source image being gone.
      expect(corruptSmall!.reason).toBeUndefined();

      for (const [index, image] of images.entries()) {
        const { repository, tag } = expectedTarget(references[index]!);
        expect((await fetchManifest(backupSession, repository, image.root.digest)).status).toBe(404);
        expect((await fetchManifest(backupSession, repository, tag)).status).toBe(404);
      }
    });

    it('retries 429 with Retry-After, 503 bursts and a connection dropped mid-blob, and copies correctly', async () => {
      const image = dockerImage(`${runtime}-faults`, { layers: 2, layerSize: 512 * 1024 });
      const reference = await seed('faulty/app', image);
      const bigLayer = image.blobs.at(-1)!;
      const rules = [
        proxy.addRule({ method: 'HEAD', path: /\/manifests\/v1$/, fault: { kind: 'status', status: 429, retryAfterSeconds: 1 } }),
        proxy.addRule({ method: 'GET', path: /\/manifests\/sha256:/, times: 2, fault: { kind: 'status', status: 503 } }),
        proxy.addRule({
          method: 'GET',
          path: new RegExp(`/blobs/${bigLayer.digest}`),
          times: 3,
          fault: { kind: 'status', status: 503 },
        }),
        proxy.addRule({
          method: 'GET',
          path: new RegExp(`/blobs/${bigLayer.digest}`),
          fault: { kind: 'drop', afterBytes: 100_000 },
        }),
      ];
      const before = proxy.requests.length;
      const [result] = await clone([reference]);
      await expectBackedUp(image, reference, result!);
      expect(rules.map((r) => r.fired)).toEqual([1, 2, 3, 1]);
      // The Retry-After second was waited for before the manifest was asked for again, as the
      // registry saw it (a lower bound: a slow machine only widens the gap).
      const heads = proxy.requests
        .slice(before)
        .filter((request) => request.method === 'HEAD' && /\/manifests\/v1$/.test(request.url));
      expect(heads[0]?.status).toBe(429);
      expect(heads[1]!.receivedAt - heads[0]!.receivedAt).toBeGreaterThanOrEqual(990);
    });

    it('switches to chunked uploads for a backup that refuses a whole blob in one request (413)', async () => {
      const image = dockerImage(`${runtime}-chunked`, { layers: 2, layerSize: 300 * 1024 });
      const reference = await seed('chunked/app', image);
      const { proxy: limited, fn: viaLimit } = await startBehindBackupProxy();
      try {
        // Like a proxy with a body limit: any blob PUT that carries bytes is refused.
        const refusal = limited.addRule({
          method: 'PUT',
          path: /\/blobs\/uploads\//,
          minBodyBytes: 1,
          times: Infinity,
          fault: { kind: 'status', status: 413, body: 'request entity too large' },
        });
        const response = await viaLimit.clone({ images: [reference] });
        const [result] = response.body.results as Result[];
        expect(result!.status, result!.error).toBe('copied');
        // Refused once per blob that was already on its way (they upload concurrently), never
        // again after: every blob then went up in PATCHes and an empty PUT.
        expect(refusal.fired).toBeGreaterThanOrEqual(1);
        expect(refusal.fired).toBeLessThanOrEqual(image.blobs.length);
        const second = await viaLimit.clone({ images: [await seed('chunked/other', dockerImage(`${runtime}-chunked-2`))] });
        expect(second.body.results[0].status).toBe('copied');
        expect(refusal.fired).toBeLessThanOrEqual(image.blobs.length);
        const patches = limited.requests.filter((r) => r.method === 'PATCH');
        expect(patches.length).toBeGreaterThanOrEqual(image.blobs.length);
        const targetRepository = expectedTarget(reference).repository;
        for (const blob of image.blobs) {
          const fetched = await fetchBlob(backupSession, targetRepository, blob.digest);
          expect(sha256Digest(fetched.bytes)).toBe(blob.digest);
        }
      } finally {
        await viaLimit.stop();
        await limited.stop();
      }
    });

    it('asks about no blob in a backup repository that does not exist yet, uploads a shared layer once, and asks in one that exists', async () => {
      const image = dockerManifestList(`${runtime}-fresh`, undefined, { sharedLayers: true });
      const reference = await seed('fresh/app', image);
      const { proxy: watched, fn: viaWatched } = await startBehindBackupProxy();
      try {
        const blobRequests = (from: number, method: string) =>
          watched.requests.slice(from).filter((r) => r.method === method && /\/blobs\/sha256:/.test(r.url));
        const [first] = (await viaWatched.clone({ images: [reference] })).body.results as Result[];
        expect(first!.status, first!.error).toBe('copied');
        await expectBackedUp(image, reference, { ...first!, target: first!.target!.replace(watched.host, backup.host) });
        expect(watched.requests.some((r) => r.method === 'GET' && r.url.includes('/tags/list'))).toBe(true);
        expect(blobRequests(0, 'HEAD')).toEqual([]);
        // Three platforms, two layers they share and a config each: five distinct blobs, each
        // uploaded (one PUT) once, and the bytes counted once.
        expect(image.blobs).toHaveLength(5);
        const puts = watched.requests.filter((r) => r.method === 'PUT' && r.url.includes('/blobs/uploads/'));
        expect(puts).toHaveLength(image.blobs.length);
        expect(first!.bytes).toBe(image.blobs.reduce((sum, blob) => sum + blob.bytes.length, 0));
        // Every manifest is pushed once: the platforms by digest, then the list, which nothing
        // refers to, straight under its tag.
        const manifestPuts = watched.requests.filter((r) => r.method === 'PUT' && r.url.includes('/manifests/'));
        const tag = /:([^:@/]+)@/.exec(first!.target!)![1];
        expect(manifestPuts.map((r) => r.url.slice(r.url.lastIndexOf('/') + 1))).toEqual([
          ...image.manifests.slice(0, -1).map(() => expect.stringMatching(/^sha256:/)),
          tag,
        ]);

        // The same repository again, another image: it exists now, so each blob is asked about.
        const other = dockerImage(`${runtime}-fresh-2`);
        const before = watched.requests.length;
        const [second] = (await viaWatched.clone({ images: [await seed('fresh/app', other, 'v2')] })).body.results as Result[];
        expect(second!.status, second!.error).toBe('copied');
        expect(blobRequests(before, 'HEAD')).toHaveLength(other.blobs.length);
      } finally {
        await viaWatched.stop();
        await watched.stop();
      }
    });

    it('asks about the large blobs in a repository the registry does not know, so a copy interrupted there is not uploaded again', async () => {
      const image = dockerImage(`${runtime}-resume`, { layerSizes: [1536 * 1024, 1536 * 1024, 2048] });
      const reference = await seed('resume/app', image);
      const isLarge = (blob: { bytes: Uint8Array }) => blob.bytes.length >= 1024 * 1024;
      const large = image.blobs.filter(isLarge);
      expect(large).toHaveLength(2);
      // What an interrupted copy leaves: the large layers, no manifest, no tag (the registry
      // still calls the repository unknown).
      for (const blob of large) await pushBlob(backupSession, expectedTarget(reference).repository, blob);
      const { proxy: watched, fn: viaWatched } = await startBehindBackupProxy();
      try {
        const [result] = (await viaWatched.clone({ images: [reference] })).body.results as Result[];
        expect(result!.status, result!.error).toBe('copied');
        await expectBackedUp(image, reference, { ...result!, target: result!.target!.replace(watched.host, backup.host) });
        const asked = watched.requests.filter((r) => r.method === 'HEAD' && /\/blobs\/sha256:/.test(r.url));
        expect(asked.map((r) => r.url.slice(r.url.lastIndexOf('/') + 1)).sort()).toEqual(large.map((b) => b.digest).sort());
        // Only the small blobs (the config and the small layer) travelled.
        const small = image.blobs.filter((blob) => !isLarge(blob));
        expect(result!.bytes).toBe(small.reduce((sum, blob) => sum + blob.bytes.length, 0));
      } finally {
        await viaWatched.stop();
        await watched.stop();
      }
    });

    it('shares one copy between concurrent requests for the same image', async () => {
      const image = dockerImage(`${runtime}-shared`, { layers: 4, layerSize: 256 * 1024 });
      const reference = await seed('shared/app', image);
      proxy.addRule({ method: 'GET', path: /\/blobs\//, times: Infinity, fault: { kind: 'delay', ms: 200 } });
      const before = proxy.requests.length;
      try {
        const [a, b] = await Promise.all([clone([reference]), clone([reference])]);
        expect(a[0]!.status).toBe('copied');
        expect(b[0]!.status).toBe('copied');
      } finally {
        proxy.clearRules();
      }
      const blobGets = proxy.requests.slice(before).filter((r) => r.method === 'GET' && r.url.includes('/blobs/'));
      expect(blobGets).toHaveLength(image.blobs.length);
    });

    it('mounts a blob another backup repository holds instead of uploading it again', async () => {
      const image = dockerImage(`${runtime}-mount`, { layers: 2, layerSize: 128 * 1024 });
      const first = await seed('mount/one', image);
      const second = await seed('mount/two', image);
      const blobGets = (from: number) =>
        proxy.requests.slice(from).filter((r) => r.method === 'GET' && r.url.includes('/blobs/'));
      const firstBefore = proxy.requests.length;
      await clone([first]);
      // The proxy records a copy's downloads, so finding none below means there were none.
      expect(blobGets(firstBefore)).toHaveLength(image.blobs.length);
      backup.issuer!.requests.length = 0;
      const blobGetsBefore = proxy.requests.length;
      const [result] = await clone([second]);
      await expectBackedUp(image, second, result!);
      expect(result!.bytes).toBe(0);
      expect(blobGets(blobGetsBefore)).toEqual([]);
      const mountScope = `repository:${expectedTarget(first).repository}:pull`;
      expect(backup.issuer!.requests.some((request) => request.scopes.includes(mountScope))).toBe(true);
    });

    it('asks for a new token when the registry refuses an expired one', async () => {
      const issuer = backup.issuer!;
      const image = dockerImage(`${runtime}-expiry`);
      const reference = await seed('expiry/app', image);
      // The first token issued from now on claims 300 s but expired two minutes ago, so the
      // registry refuses it at once; the next ones are valid.
      const grant = issuer.policy;
      const firstRequest = issuer.requests.length;
      issuer.advertisedExpiresIn = 300;
      issuer.policy = (user, requested) => {
        issuer.lifetimeSeconds = issuer.requests.length === firstRequest + 1 ? -120 : 300;
        return grant(user, requested);
      };
      try {
        const [result] = await clone([reference]);
        await expectBackedUp(image, reference, result!);
        expect(issuer.requests.length).toBeGreaterThanOrEqual(firstRequest + 2);
      } finally {
        issuer.policy = grant;
        issuer.lifetimeSeconds = 300;
        issuer.advertisedExpiresIn = undefined;
      }
    });

    it('treats an image already in the backup namespace as backed up', async () => {
      const image = dockerImage(`${runtime}-already`);
      const reference = await seed('already/app', image);
      const [copied] = await clone([reference]);
      const [again] = await clone([copied!.target!]);
      expect(again).toMatchObject({ status: 'exists', digest: image.root.digest, source: copied!.target });
    });

    it('streams NDJSON progress for a long copy', async () => {
      const image = dockerImage(`${runtime}-progress`, { layers: 1, layerSize: 3 * 1024 * 1024 });
      const reference = await seed('progress/app', image);
      const response = await fn.clone({ images: [reference] }, { accept: 'application/x-ndjson' });
      const events = String(response.body)
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line));
      expect(events[0]).toMatchObject({ type: 'image', status: 'started' });
      const layer = image.blobs.find((blob) => blob.bytes.length > 3 * 1024 * 1024)!;
      const progress = events.filter((e) => e.type === 'blob' && e.digest === layer.digest).map((e) => e.done);
      expect(progress.length).toBeGreaterThanOrEqual(3);
      expect(progress).toEqual([...progress].sort((a, b) => a - b));
      expect(progress.at(-1)).toBe(layer.bytes.length);
      expect(events.at(-1)).toMatchObject({ type: 'done', results: [{ status: 'copied', digest: image.root.digest }] });
    });

    it('answers 202 to a callback request, then POSTs the signed results', async () => {
      const image = dockerImage(`${runtime}-callback`);
      const reference = await seed('callback/app', image);
      const received: Array<{ headers: IncomingMessage['headers']; body: string }> = [];
      let answer = 503;
      const receiver = createServer((req, res) => {
        let body = '';
        req.on('data', (chunk) => (body += chunk));
        req.on('end', () => {
          received.push({ headers: req.headers, body });
          res.writeHead(answer).end();
          answer = 204;
        });
      });
      await new Promise<void>((resolve) => receiver.listen(callbackPort, '127.0.0.1', resolve));
      const url = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/callback`;
      try {
        const response = await fn.clone({ images: [reference], callback: { url, context: { workload: 'default/app' } } });
        expect(response.status).toBe(202);
        const job = response.body.job as string;
        const deadline = Date.now() + 45_000;
        while (received.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        expect(received).toHaveLength(2);
        const { headers, body } = received[1]!;
        const expected = createHmac('sha256', CALLBACK_SECRET).update(`${headers['x-clone-timestamp']}.${body}`).digest('hex');
        expect(headers['x-clone-signature']).toBe(`sha256=${expected}`);
        expect(headers['x-clone-job']).toBe(job);
        const payload = JSON.parse(body);
        expect(payload).toMatchObject({ job, context: { workload: 'default/app' } });
        await expectBackedUp(image, reference, payload.results[0]);
      } finally {
        receiver.close();
      }
    });

    it('refuses bad input with 400 and a missing or wrong token with 401', async () => {
      expect((await fn.clone('{"images": [')).status).toBe(400);
      expect((await fn.clone({})).body.error).toMatch(/missing field "images"/);
      expect((await fn.clone({ images: ['library/UPPER'] })).body.error).toMatch(/must be lowercase/);
      expect((await fn.clone({ images: Array(51).fill('nginx') })).body.error).toMatch(/more than 50 images/);
      expect((await fn.clone({ images: ['a'], pad: 'x'.repeat(300_000) })).status).toBe(400);
      const anonymous = await fetch(`${fn.url}/clone`, { method: 'POST', body: '{"images":["nginx"]}' });
      expect(anonymous.status).toBe(401);
      const wrong = await fetch(`${fn.url}/clone`, {
        method: 'POST',
        headers: { authorization: 'Bearer wrong-token' },
        body: '{}',
      });
      expect(wrong.status).toBe(401);
    });

    it('never logs a credential', async () => {
      // A copy into a new backup repository: the backup's credentials are used for its token now.
      const reference = await seed('logs/app', dockerImage(`${runtime}-logs`));
      const [result] = await clone([reference]);
      expect(result!.status, result!.error).toBe('copied');
      await expectCredentialsNotLogged(fn, reference, [...credentialForms(backup.credentials!), fn.authToken, CALLBACK_SECRET]);
    });
  });
}
