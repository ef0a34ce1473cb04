import { describe, expect, it } from 'vitest';
import { DigestVerifier, digestOf } from '../../functions/registry/digest.ts';
import { MEDIA_TYPES, parseManifest } from '../../functions/registry/manifest.ts';
import { DigestMismatchError } from '../../functions/registry/errors.ts';

const enc = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
const d = (n: number) => `sha256:${String(n).padStart(64, '0')}`;

describe('parseManifest', () => {
  it('lists the platforms of an index as children and no blobs', () => {
    const parsed = parseManifest(
      enc({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.ociIndex,
        manifests: [
          { mediaType: MEDIA_TYPES.ociManifest, digest: d(1), size: 10, platform: { os: 'linux', architecture: 'amd64' } },
          {
            mediaType: MEDIA_TYPES.ociManifest,
            digest: d(2),
            size: 10,
            annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
          },
        ],
      }),
    );
    expect(parsed.mediaType).toBe(MEDIA_TYPES.ociIndex);
    expect(parsed.manifests.map((m) => m.digest)).toEqual([d(1), d(2)]);
    expect(parsed.blobs).toEqual([]);
  });

  it('lists config and layers once each, keeping foreign layers apart', () => {
    const parsed = parseManifest(
      enc({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.dockerManifest,
        config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: d(1), size: 5 },
        layers: [
          { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: d(2), size: 5 },
          { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: d(2), size: 5 },
          {
            mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
            digest: d(3),
            size: 5,
            urls: ['https://x/y'],
          },
        ],
      }),
    );
    expect(parsed.blobs.map((b) => b.digest)).toEqual([d(1), d(2)]);
    expect(parsed.foreignLayers.map((b) => b.digest)).toEqual([d(3)]);
  });

  it('takes the media type from the content type, or the shape, when the manifest has none', () => {
    const manifest = enc({ schemaVersion: 2, config: { mediaType: 'x', digest: d(1), size: 1 }, layers: [] });
    expect(parseManifest(manifest, `${MEDIA_TYPES.dockerManifest}; charset=utf-8`).mediaType).toBe(MEDIA_TYPES.dockerManifest);
    expect(parseManifest(manifest).mediaType).toBe(MEDIA_TYPES.ociManifest);
    expect(parseManifest(enc({ schemaVersion: 2, manifests: [] })).mediaType).toBe(MEDIA_TYPES.ociIndex);
  });

  it('keeps the subject of an artifact', () => {
    const parsed = parseManifest(
      enc({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.ociManifest,
        artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json',
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: d(1), size: 2 },
        layers: [],
        subject: { mediaType: MEDIA_TYPES.ociIndex, digest: d(9), size: 100 },
      }),
    );
    expect(parsed.subject?.digest).toBe(d(9));
  });

  it.each([
    [new TextEncoder().encode('{'), /not valid JSON/],
    [enc([]), /not a JSON object/],
    [enc({ schemaVersion: 1, fsLayers: [] }), /schema 1/],
    [enc({ schemaVersion: 2, mediaType: 'text/plain' }), /unsupported manifest media type/],
    [
      enc({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [{ digest: 'nope', size: 1, mediaType: 'x' }] }),
      /invalid digest/,
    ],
    [
      enc({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config: { digest: d(1), size: -1, mediaType: 'x' } }),
      /invalid size/,
    ],
  ])('refuses bad manifests (%#)', (bytes, message) => {
    expect(() => parseManifest(bytes)).toThrow(message);
  });
});

describe('DigestVerifier', () => {
  const content = new TextEncoder().encode('hello, registry');

  async function pass(chunks: Uint8Array[], digest: string, size: number) {
    const verifier = new DigestVerifier(digest, size, 'blob');
    const received: number[] = [];
    const source = new ReadableStream<Uint8Array>({
      start(controller) {
        chunks.forEach((chunk) => controller.enqueue(chunk));
        controller.close();
      },
    });
    const reader = source.pipeThrough(verifier.stream).getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        received.push(value.byteLength);
      }
      return { received, error: undefined, failure: verifier.failure };
    } catch (error) {
      return { received, error, failure: verifier.failure };
    }
  }

  it('passes content that matches', async () => {
    const result = await pass([content.subarray(0, 5), content.subarray(5)], digestOf(content), content.length);
    expect(result.error).toBeUndefined();
    expect(result.received).toEqual([5, content.length - 5]);
  });

  it('errors instead of releasing the last chunk when the digest differs', async () => {
    const result = await pass(
      [content.subarray(0, 5), content.subarray(5)],
      digestOf(new TextEncoder().encode('other')),
      content.length,
    );
    expect(result.error).toBeInstanceOf(DigestMismatchError);
    expect(result.failure).toBe(result.error);
    expect(result.received.reduce((a, b) => a + b, 0)).toBeLessThan(content.length);
  });

  it('errors on a short or a long body', async () => {
    expect((await pass([content.subarray(0, 5)], digestOf(content), content.length)).error).toBeInstanceOf(DigestMismatchError);
    expect((await pass([content, content], digestOf(content), content.length)).error).toBeInstanceOf(DigestMismatchError);
  });
});
