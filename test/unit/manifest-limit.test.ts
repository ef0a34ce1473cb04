import { describe, expect, it } from 'vitest';
import { BlobCopier, KnownBlobs } from '../../functions/copy/blob.ts';
import { ImageCopier } from '../../functions/copy/image.ts';
import { DEFAULT_LIMITS } from '../../functions/copy/limits.ts';
import { TreeCopier } from '../../functions/copy/tree.ts';
import { backupLocation } from '../../functions/contract/index.ts';
import { RegistryClient } from '../../functions/registry/client.ts';
import { StaticCredentials } from '../../functions/registry/credentials.ts';
import { Repository } from '../../functions/registry/repository.ts';

const silent = { info() {}, warn() {}, error() {}, debug() {} };
const policy = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxTotalMs: 1, maxRetryAfterMs: 1 };

/** A registry client whose registry answers every request with `body` (and the headers given). */
function clientServing(body: () => ReadableStream<Uint8Array>, headers: Record<string, string> = {}) {
  return new RegistryClient({
    fetch: async () =>
      new Response(body(), {
        status: 200,
        headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json', ...headers },
      }),
    credentials: new StaticCredentials(new Map()),
    retryPolicy: policy,
  });
}

function repositoryServing(body: () => ReadableStream<Uint8Array>, headers: Record<string, string> = {}) {
  return new Repository(clientServing(body, headers), { registry: 'source.example', repository: 'app' }, 'pull', {
    retryPolicy: policy,
  });
}

function copierServing(body: () => ReadableStream<Uint8Array>) {
  const client = clientServing(body);
  const blobs = new BlobCopier({
    runtime: { sizedBody: (s) => s },
    known: new KnownBlobs(),
    transferConcurrency: 1,
    smallBlobsPerSlot: 1,
    retryPolicy: policy,
    stallMs: DEFAULT_LIMITS.stallMs,
  });
  return new ImageCopier({
    repository: (name, access, scope) => new Repository(client, name, access, { retryPolicy: policy, ...scope }),
    tree: new TreeCopier({ blobs, limits: DEFAULT_LIMITS, blobConcurrency: 1, smallBlobsPerSlot: 1 }),
    backup: backupLocation('backup.example', 'ns'),
    limits: DEFAULT_LIMITS,
    logger: silent,
  });
}

function chunks(count: number, size: number): () => ReadableStream<Uint8Array> {
  return () => {
    let sent = 0;
    return new ReadableStream({
      pull(controller) {
        if (sent++ === count) controller.close();
        else controller.enqueue(new Uint8Array(size).fill(0x20));
      },
    });
  };
}

describe('manifest size limit (4 MiB)', () => {
  it('refuses a manifest whose Content-Length says it is larger, without reading it', async () => {
    let pulled = 0;
    const repository = repositoryServing(
      () => new ReadableStream({ pull: (c) => void (pulled++ < 100 ? c.enqueue(new Uint8Array(1024)) : c.close()) }),
      { 'content-length': String(5 * 1024 * 1024) },
    );
    await expect(repository.getManifest('v1')).rejects.toThrow(/larger than 4 MiB/);
    expect(pulled).toBeLessThan(5);
  });

  it('stops reading a body that grows past 4 MiB without a Content-Length', async () => {
    await expect(repositoryServing(chunks(1000, 64 * 1024)).getManifest('v1')).rejects.toThrow(/larger than 4 MiB/);
  });

  it('accepts a manifest of exactly 4 MiB', async () => {
    // 4 MiB of spaces is not JSON: the size passes, the parse fails.
    await expect(repositoryServing(chunks(64, 64 * 1024)).getManifest('v1')).rejects.toThrow(/not valid JSON/);
  });

  it('copies an image through copy() and reports a failure as a result, never a throw', async () => {
    const copier = copierServing(chunks(1000, 64 * 1024));
    const result = await copier.copy('source.example/app:v1');
    expect(result).toMatchObject({ status: 'failed', source: 'source.example/app:v1' });
  });
});
