// The clone function against registries that misbehave on purpose (testbed/hostile-registry.ts),
// on Node and in workerd: each rule refuses, bounds or recovers, the internal service the hostile
// registry points at is never reached, nothing it says is echoed, and the function keeps copying
// other images throughout.

import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CloneResult } from '../../functions/contract/index.ts';
import type { CloneFunction, FunctionEnv } from '../../testbed/clone-function.ts';
import {
  blobOf,
  imageOf,
  indexOf,
  manifestOf,
  ociError,
  plain,
  repositoryOf,
  startHostileRegistry,
  trickle,
  type HostileRegistry,
} from '../../testbed/hostile-registry.ts';
import { ociImage, pushImage } from '../../testbed/images.ts';
import { freePort } from '../../testbed/ports.ts';
import { startRegistry, type Registry } from '../../testbed/registry.ts';
import { waitFor } from '../../testbed/wait.ts';
import { credentialForms, expectCredentialsNotLogged } from '../support/logs.ts';

const TENANT_PASSWORD = 'password-of-registry-a';
const STALL_SECONDS = 2;

export function describeHostileRegistries(runtime: 'node' | 'worker', start: (env: FunctionEnv) => Promise<CloneFunction>) {
  describe(`the clone function (${runtime}) against hostile registries`, () => {
    let hostile: HostileRegistry;
    /** A second one for the challenges: a registry's auth scheme, once learned, holds for all its repositories. */
    let authHostile: HostileRegistry;
    let source: Registry;
    let backup: Registry;
    let fn: CloneFunction;
    let closedPort: number;
    /** A plain-HTTP service on 127.0.0.1 that is no registry (and not listed as insecure). */
    let banner: Server;

    beforeAll(async () => {
      banner = createServer((_request, response) => plain(response, 200, 'ADMIN CONSOLE', 'text/plain'));
      await new Promise<void>((resolve) => banner.listen(0, '127.0.0.1', resolve));
      [hostile, authHostile, source, backup, closedPort] = await Promise.all([
        startHostileRegistry(),
        startHostileRegistry(),
        startRegistry({ auth: 'none' }),
        startRegistry({ auth: 'none' }),
        freePort(),
      ]);
      fn = await start({
        BACKUP_REGISTRY: backup.host,
        BACKUP_NAMESPACE: 'backups',
        // The hostile registry's second origin is a registry the operator configured (so a redirect
        // there over plain HTTP is followed); its internal service is not.
        INSECURE_REGISTRIES: [hostile, authHostile]
          .flatMap((h) => [h.host, h.otherHost])
          .concat(source.host, backup.host)
          .join(','),
        REGISTRY_AUTH_JSON: JSON.stringify({
          auths: { [authHostile.host]: { username: 'tenant-a', password: TENANT_PASSWORD } },
        }),
        // 169.254.*: the egress rules hold for a registry the allowlist lets through too.
        SOURCE_REGISTRIES: '127.0.0.1:*,169.254.*',
        SHARED_CREDENTIAL_REGISTRIES: authHostile.host,
        STALL_SECONDS: String(STALL_SECONDS),
        MAX_MANIFESTS_PER_IMAGE: '50',
        TRANSFER_CONCURRENCY: '4',
        SMALL_BLOBS_PER_SLOT: '1',
        IMAGE_CONCURRENCY: '4',
      });
    });

    afterAll(async () => {
      await fn?.stop();
      await Promise.all([hostile?.stop(), authHostile?.stop(), source?.stop(), backup?.stop()]);
      banner?.close();
    });

    const copy = async (...images: string[]): Promise<CloneResult[]> => {
      const response = await fn.clone({ images });
      expect(response.status, JSON.stringify(response.body)).toBe(200);
      return response.body.results as CloneResult[];
    };
    const manifestGets = (repository: string) =>
      hostile.requests.filter((r) => r.method === 'GET' && r.url.startsWith(`/v2/${repository}/manifests/`)).length;

    /** A tag the HEAD resolves without a digest, so the manifest GET is what `answer` serves. */
    const servingGet = (answer: (response: ServerResponse) => void) =>
      repositoryOf([], [], {
        intercept: (request, response, path) => {
          if (path.kind !== 'manifests') return false;
          if (request.method === 'HEAD') plain(response, 200, '', 'application/vnd.oci.image.manifest.v1+json');
          else answer(response);
          return true;
        },
      });

    it('follows no redirect into the internal network, and repeats nothing of what answered', async () => {
      const { manifest, blobs } = imageOf('redirected');
      hostile.add(
        'redirect/plain-http',
        repositoryOf([manifest], blobs, {
          intercept: (request, response, path) => {
            if (path.kind !== 'blobs' || request.method !== 'GET') return false;
            response.writeHead(307, { location: `http://${hostile.internalHost}/admin` }).end();
            return true;
          },
        }),
      );
      hostile.add(
        'redirect/metadata',
        repositoryOf([], [], {
          intercept: (_request, response) => {
            response.writeHead(302, { location: 'https://169.254.169.254/latest/meta-data/iam/' }).end();
            return true;
          },
        }),
      );
      const [plainHttp, metadata] = await copy(`${hostile.host}/redirect/plain-http:v1`, `${hostile.host}/redirect/metadata:v1`);
      expect(plainHttp).toMatchObject({ status: 'failed' });
      expect(plainHttp!.error).toMatch(/refused a redirect to plain HTTP/);
      expect(metadata!.error).toMatch(/refused a redirect to a link-local or cloud metadata address/);
      for (const result of [plainHttp, metadata]) expect(result!.error).not.toMatch(/ADMIN|postgres|s3cret/);
      expect(hostile.internalRequests).toEqual([]);
    });

    it('says "not a registry response" for an error page, and escapes and bounds a registry\'s own message', async () => {
      hostile.add(
        'errors/page',
        servingGet((response) =>
          plain(response, 403, '<html><h1>ADMIN CONSOLE</h1> postgres://admin:s3cret@db.internal</html>', 'text/html'),
        ),
      );
      const sneaky = `image \u202Eelif\u202C gone\u0007${'!'.repeat(2000)}`;
      hostile.add(
        'errors/oci',
        servingGet((response) => ociError(response, 400, 'MANIFEST_INVALID', sneaky)),
      );
      const [html, oci] = await copy(`${hostile.host}/errors/page:v1`, `${hostile.host}/errors/oci:v1`);
      expect(html!.error).toMatch(/HTTP 403 \(not a registry response\)$/);
      expect(html!.error).not.toMatch(/ADMIN|postgres|s3cret|html/);
      expect(oci!.error).toContain('HTTP 400 (MANIFEST_INVALID: image \\u{202e}elif\\u{202c} gone\\u{7}!!!');
      expect(oci!.error).not.toMatch(/[\u202E\u0007]/);
      expect(oci!.error!.length).toBeLessThan(400);
    });

    it('tells neither a closed port nor a service that does not speak TLS apart: both "cannot reach"', async () => {
      const bannerPort = (banner.address() as AddressInfo).port;
      const [closed, notTls] = await copy(`127.0.0.1:${closedPort}/app:v1`, `127.0.0.1:${bannerPort}/app:v1`);
      expect(closed!.error).toMatch(new RegExp(`: cannot reach 127\\.0\\.0\\.1:${closedPort}$`));
      expect(notTls!.error).toMatch(/: cannot reach 127\.0\.0\.1:\d+$/);
      for (const result of [closed, notTls]) expect(result!.error).not.toMatch(/ECONNREFUSED|SSL|TLS|version|certificate/i);
    });

    it('refuses a link-local or metadata address written in the reference', async () => {
      const [result] = await copy('169.254.169.254/latest:v1');
      expect(result!.error).toMatch(/169\.254\.169\.254 is a link-local or cloud metadata address/);
    });

    it('copies each child of an index once, however often it is listed', async () => {
      const { manifest, blobs } = imageOf('listed-200-times');
      const index = indexOf(Array.from({ length: 200 }, () => manifest));
      hostile.add('index/repeated', repositoryOf([manifest, index], blobs));
      const [result] = await copy(`${hostile.host}/index/repeated:v1`);
      expect(result, JSON.stringify(result)).toMatchObject({ status: 'copied', digest: index.digest });
      expect(hostile.requests.filter((r) => r.url === `/v2/index/repeated/manifests/${manifest.digest}`)).toHaveLength(1);
    });

    it('stops at indexes nested too deep, each listing its child twice, having read a handful of manifests', async () => {
      const { manifest, blobs } = imageOf('deep');
      const chain = [manifest];
      for (let level = 0; level < 6; level++) chain.push(indexOf([chain.at(-1)!, chain.at(-1)!], 1024 * 1024));
      hostile.add('index/deep', repositoryOf(chain, blobs));
      const [result] = await copy(`${hostile.host}/index/deep:v1`);
      expect(result!.error).toMatch(/indexes nested more than 4 deep \(MAX_INDEX_DEPTH\)/);
      expect(manifestGets('index/deep')).toBeLessThanOrEqual(6);
    });

    it('stops at too many manifests, and at too many manifest bytes', async () => {
      const children = Array.from({ length: 60 }, (_, i) => imageOf(`many-${i}`));
      const wide = indexOf(children.map((child) => child.manifest));
      hostile.add(
        'index/many',
        repositoryOf(
          [...children.map((c) => c.manifest), wide],
          children.flatMap((c) => c.blobs),
        ),
      );
      // Five image manifests of almost 4 MiB each: each within the registries' limit, 19 MiB together.
      const large = Array.from({ length: 5 }, (_, i) =>
        manifestOf({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: blobOf('{}').digest, size: 2 },
          layers: [],
          annotations: { padding: `${i}`.padEnd(3_900_000, 'x') },
        }),
      );
      const heavy = indexOf(large);
      hostile.add('index/heavy', repositoryOf([...large, heavy], [blobOf('{}')]));
      const [many, bytes] = await copy(`${hostile.host}/index/many:v1`, `${hostile.host}/index/heavy:v1`);
      expect(many!.error).toMatch(/more than 50 manifests \(MAX_MANIFESTS_PER_IMAGE\)/);
      expect(manifestGets('index/many')).toBeLessThanOrEqual(51);
      expect(bytes!.error).toMatch(/exceed 16777216 bytes in all \(MAX_MANIFEST_BYTES_PER_IMAGE\)/);
    });

    it('gives up a blob whose bytes stop coming, after retrying it', async () => {
      const { manifest, blobs } = imageOf('stalls', 1, 4096);
      const layer = blobs[1]!;
      hostile.add(
        'blob/stalls',
        repositoryOf([manifest], blobs, {
          intercept: (request, response, path) => {
            if (path.kind !== 'blobs' || path.reference !== layer.digest || request.method !== 'GET') return false;
            response.writeHead(200, { 'content-length': layer.bytes.byteLength });
            response.write(layer.bytes.subarray(0, 100)); // and then nothing
            return true;
          },
        }),
      );
      const [result] = await copy(`${hostile.host}/blob/stalls:v1`);
      expect(result!.error).toMatch(new RegExp(`no progress for ${STALL_SECONDS} s \\(STALL_SECONDS\\)`));
      const attempts = hostile.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/blobs/${layer.digest}`)).length;
      expect(attempts).toBeGreaterThan(1);
    });

    it('answers for a failed image only once its other transfers have ended, leaving none running (on Workers it would hold its slot for ever)', async () => {
      // Layer 1 comes in 2 s, 16 KiB every 200 ms (streamed: over 64 KiB); layer 2 does not match
      // its digest, a failure not retried (two blobs at a time on Workers: the config's slot frees
      // first, so the failure comes while layer 1 is under way).
      const { manifest, blobs } = imageOf('fails-fast', 2, 160 * 1024);
      const [slow, gone] = [blobs[1]!, blobs[2]!];
      let slowEnded: { at: number; whole: boolean } | undefined;
      hostile.add(
        'blob/fails-fast',
        repositoryOf([manifest], blobs, {
          intercept: (request, response, path) => {
            if (path.kind !== 'blobs' || request.method !== 'GET') return false;
            if (path.reference === gone.digest) {
              response.writeHead(200, { 'content-length': gone.bytes.byteLength }).end(Buffer.alloc(gone.bytes.byteLength));
            } else if (path.reference === slow.digest) {
              response.on('close', () => (slowEnded = { at: Date.now(), whole: response.writableFinished }));
              trickle(response, slow.bytes, 16 * 1024, 200);
            } else return false;
            return true;
          },
        }),
      );
      const [result] = await copy(`${hostile.host}/blob/fails-fast:v1`);
      const answered = Date.now();
      expect(result!.status).toBe('failed');
      expect(result!.error).toMatch(/does not match its digest/);
      expect(hostile.requests.some((r) => r.method === 'GET' && r.url.endsWith(`/blobs/${slow.digest}`))).toBe(true);
      expect(slowEnded, 'the slow layer was still being transferred when the failure was answered').toBeDefined();
      expect(slowEnded!.at).toBeLessThanOrEqual(answered);
      // Read to its end, not dropped with the request (workerd closes what a finished request left
      // open, and what waited on it, a transfer slot of the isolate, is never given back).
      expect(slowEnded!.whole).toBe(true);
      // And the registry's transfers are all free: another image from it copies.
      const next = imageOf('after-the-failure', 1, 1024);
      hostile.add('blob/after-the-failure', repositoryOf([next.manifest], next.blobs));
      const [after] = await copy(`${hostile.host}/blob/after-the-failure:v1`);
      expect(after!.status, after!.error).toBe('copied');
    });

    it('keeps a share of the transfers for other registries while one trickles', async () => {
      // Eight layers of 80 KiB sent 8 KiB every 250 ms: bytes keep coming (no stall), slowly.
      const { manifest, blobs } = imageOf('trickles', 8, 80 * 1024);
      hostile.add(
        'blob/trickles',
        repositoryOf([manifest], blobs, {
          intercept: (request, response, path) => {
            const blob =
              path.kind === 'blobs' && request.method === 'GET' ? blobs.find((b) => b.digest === path.reference) : undefined;
            if (blob === undefined || blob === blobs[0]) return false;
            trickle(response, blob.bytes, 8 * 1024, 250);
            return true;
          },
        }),
      );
      const healthy = ociImage('healthy-while-another-trickles');
      await pushImage(source.url, 'healthy/app', healthy, { tag: 'v1' });
      const response = await fetch(`${fn.url}/clone`, {
        method: 'POST',
        headers: { authorization: `Bearer ${fn.authToken}`, 'content-type': 'application/json', accept: 'application/x-ndjson' },
        body: JSON.stringify({ images: [`${hostile.host}/blob/trickles:v1`, `${source.host}/healthy/app:v1`] }),
      });
      const events = (await response.text())
        .trim()
        .split('\n')
        .map(
          (line) => JSON.parse(line) as { type: string; source?: string; done?: number; total?: number; result?: CloneResult },
        );
      const trickled = (event: (typeof events)[number]) =>
        event.type === 'blob' &&
        event.source?.includes('blob/trickles') &&
        event.total === 80 * 1024 &&
        event.done === event.total;
      const firstTrickledBlob = events.findIndex(trickled);
      const healthyResult = events.findIndex((e) => e.type === 'result' && e.result?.source.includes('healthy/app'));
      expect(events.at(-1)).toMatchObject({ type: 'done' });
      expect(events[healthyResult]?.result).toMatchObject({ status: 'copied' });
      expect(firstTrickledBlob).toBeGreaterThan(-1);
      // The healthy image was done before the slow registry had finished a single blob.
      expect(healthyResult).toBeLessThan(firstTrickledBlob);
    });

    it('learns no challenge from where a registry redirected to, and sends its credentials nowhere else', async () => {
      authHostile.add(
        'auth/redirected',
        repositoryOf([], [], {
          intercept: (_request, response) => {
            response.writeHead(307, { location: `http://${authHostile.otherHost}/v2/auth/elsewhere/manifests/v1` }).end();
            return true;
          },
        }),
      );
      authHostile.add(
        'auth/elsewhere',
        repositoryOf([], [], {
          intercept: (_request, response) => {
            ociError(response, 401, 'UNAUTHORIZED', 'authentication required', {
              'www-authenticate': `Bearer realm="http://${authHostile.internalHost}/token",service="x"`,
            });
            return true;
          },
        }),
      );
      authHostile.add(
        'auth/offsite-realm',
        repositoryOf([], [], {
          intercept: (_request, response) => {
            ociError(response, 401, 'UNAUTHORIZED', 'authentication required', {
              'www-authenticate': `Bearer realm="http://${authHostile.internalHost}/token",service="x"`,
            });
            return true;
          },
        }),
      );
      const [redirected, offsite] = await copy(
        `${authHostile.host}/auth/redirected:v1`,
        `${authHostile.host}/auth/offsite-realm:v1`,
      );
      expect(redirected!.error).toMatch(/HTTP 401 from where the registry redirected to/);
      expect(offsite!.error).toMatch(/the realm 127\.0\.0\.2:\d+ is not on the registry's own site; credentials not sent/);
      expect(authHostile.internalRequests).toEqual([]);
      const sentToOtherOrigin = authHostile.requests.filter((r) => r.url.startsWith('/v2/auth/elsewhere/'));
      expect(sentToOtherOrigin.length).toBeGreaterThan(0);
      expect(sentToOtherOrigin.every((r) => r.authorization === undefined)).toBe(true);
      await expectCredentialsNotLogged(
        fn,
        `${authHostile.host}/auth/redirected:v1`,
        credentialForms({ username: 'tenant-a', password: TENANT_PASSWORD }),
      );
    });

    it('copies only from the registries SOURCE_REGISTRIES allows', async () => {
      const before = hostile.requests.length;
      const [refused] = await copy(`${hostile.otherHost}/anything/app:v1`);
      expect(refused!.error).toBe(`${hostile.otherHost} is not an allowed source registry (SOURCE_REGISTRIES)`);
      expect(hostile.requests.length).toBe(before);
    });

    it('posts no callback to an origin the operator did not allow, and survives a context built to crash it', async () => {
      const callback = await fn.clone({
        images: [`${source.host}/healthy/app:v1`],
        callback: { url: `http://${hostile.internalHost}/hook` },
      });
      expect(callback.status).toBe(400);
      const nested = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
      const deep = await fn.clone(
        `{"images":["${source.host}/healthy/app:v1"],"callback":{"url":"http://127.0.0.1:1/cb","context":${nested}}}`,
      );
      expect(deep.status).toBe(400);
      expect(hostile.internalRequests).toEqual([]);
      // Still up, still copying.
      const healthy = ociImage('still-up');
      await pushImage(source.url, 'still/up', healthy, { tag: 'v1' });
      const [result] = await copy(`${source.host}/still/up:v1`);
      expect(result).toMatchObject({ status: 'copied' });
    });

    // wrangler dev does not pass a client's disconnect on to the Worker (checked with a Worker that
    // only logs request.signal and its stream's cancel: neither fires); deployed Workers abort
    // request.signal with the enable_request_signal flag, which wrangler.toml sets.
    it.skipIf(runtime === 'worker')('cancels the copy once nobody waits for it', async () => {
      const { manifest, blobs } = imageOf('abandoned', 1, 128 * 1024);
      const layer = blobs[1]!;
      hostile.add(
        'blob/abandoned',
        repositoryOf([manifest], blobs, {
          intercept: (request, response, path) => {
            if (path.kind !== 'blobs' || path.reference !== layer.digest || request.method !== 'GET') return false;
            response.on('close', () => {
              if (!response.writableFinished) hostile.closedDownloads.push(`blob/abandoned@${layer.digest}`);
            });
            trickle(response, layer.bytes, 1024, 500); // about a minute, never stalled
            return true;
          },
        }),
      );
      const client = new AbortController();
      const request = fetch(`${fn.url}/clone`, {
        method: 'POST',
        headers: { authorization: `Bearer ${fn.authToken}`, 'content-type': 'application/json', accept: 'application/x-ndjson' },
        body: JSON.stringify({ images: [`${hostile.host}/blob/abandoned:v1`] }),
        signal: client.signal,
      }).then(
        (response) => response.text().catch(() => undefined),
        () => undefined,
      );
      await waitFor(
        'the download to begin',
        () => hostile.requests.some((r) => r.method === 'GET' && r.url.endsWith(`/blobs/${layer.digest}`)),
        20_000,
      ).catch((error) => {
        console.log(fn.logs().slice(-6000));
        throw error;
      });
      client.abort();
      await request;
      await waitFor(
        'the function to drop the download',
        () => hostile.closedDownloads.includes(`blob/abandoned@${layer.digest}`),
        20_000,
      );
    });
  });
}
