// Test images built by code, as the exact bytes a registry stores, and a deliberately small
// raw-HTTP client to seed registries with them and read them back. Independent of functions/ on
// purpose: tests check the copy engine against code written separately.
//
// Every builder is deterministic: the same seed gives the same bytes and digests.
import { createCipheriv, createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import type { Credentials } from './token-issuer.ts';

export const MediaTypes = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayer: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociZstdLayer: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  inToto: 'application/vnd.in-toto+json',
} as const;

/**
 * The Accept header a manifest GET needs. Without it distribution 2.8 answers an OCI manifest or
 * index by tag with 404, and converts a Docker schema2 manifest to schema1 (another digest).
 */
export const MANIFEST_ACCEPT = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest,
].join(', ');

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
  urls?: string[];
  artifactType?: string;
}

export interface ManifestBytes {
  digest: string;
  mediaType: string;
  bytes: Uint8Array;
}

export interface BlobBytes {
  digest: string;
  bytes: Uint8Array;
}

export interface TestImage {
  /** What a tag points at; the last entry of `manifests`. */
  root: Descriptor;
  /** Every manifest, children before parents, exactly as pushed. */
  manifests: ManifestBytes[];
  /** Every blob the registry holds for the image (configs and layers), each once. */
  blobs: BlobBytes[];
  /** Layers the manifests reference by URL; never pushed (registries do not hold them). */
  foreignLayers: Descriptor[];
}

const KiB = 1024;
const MiB = 1024 * KiB;
const CREATED = '2024-01-01T00:00:00Z';

export const DEFAULT_PLATFORMS: Platform[] = [
  { architecture: 'amd64', os: 'linux' },
  { architecture: 'arm64', os: 'linux', variant: 'v8' },
  { architecture: 'arm', os: 'linux', variant: 'v7' },
];

// ---------------------------------------------------------------------------------------------
// Bytes and digests

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/**
 * Incompressible pseudo-random bytes determined by `seed`: the AES-256-CTR keystream under key
 * sha256(seed), in 64 KiB pieces. AES runs at GB/s here; what costs is the first touch of fresh
 * memory (slow page faults on these VMs, several ms per MiB), so callers copy the pieces straight
 * to where they belong instead of building whole intermediate buffers.
 */
function* keystream(seed: string, size: number): Generator<Uint8Array> {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(Math.min(size, 64 * KiB));
  for (let offset = 0; offset < size; offset += zeros.length) {
    yield cipher.update(zeros).subarray(0, size - offset);
  }
}

export function deterministicBytes(seed: string, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const piece of keystream(seed, size)) {
    out.set(piece, offset);
    offset += piece.length;
  }
  return out;
}

// Layers are real archives, so tools that look inside treat them as built images (skopeo detects
// compression by magic bytes and re-compresses "uncompressed" layers, changing their digests): a
// ustar archive holding one file of random bytes, in gzip or zstd framing that stores the bytes
// as they are. Hand-written framing is stable across zlib versions, so digests are too.

/** A ustar archive with one regular file `name` of `size` random bytes from `seed`, in pieces. */
function tarWithRandomFile(name: string, size: number, seed: string): { length: number; pieces: Iterable<Uint8Array> } {
  const header = new Uint8Array(512);
  const put = (offset: number, text: string): void => header.set(new TextEncoder().encode(text), offset);
  const octal = (value: number, width: number): string => `${value.toString(8).padStart(width - 1, '0')}\0`;
  put(0, name.slice(-99));
  put(100, octal(0o644, 8));
  put(108, octal(0, 8)); // uid
  put(116, octal(0, 8)); // gid
  put(124, octal(size, 12));
  put(136, octal(0, 12)); // mtime: the epoch, for reproducible layers
  put(148, ' '.repeat(8)); // the checksum is computed with its own field as spaces
  put(156, '0'); // regular file
  put(257, 'ustar\0');
  put(263, '00');
  put(
    148,
    `${header
      .reduce((sum, byte) => sum + byte, 0)
      .toString(8)
      .padStart(6, '0')}\0 `,
  );
  const padding = (512 - (size % 512)) % 512;
  return {
    length: 512 + size + padding + 1024, // header, data padded to a block, two zero end blocks
    pieces: (function* () {
      yield header;
      yield* keystream(seed, size);
      yield new Uint8Array(padding + 1024);
    })(),
  };
}

/** How a compressed format stores bytes uncompressed: a prefix, headed blocks, a trailer. */
interface Framing {
  prefix: number[];
  blockMax: number;
  blockHeader(length: number, last: boolean): number[];
  trailerSize: number;
  trailer(crc: number, length: number): number[];
}

const le32 = (n: number): number[] => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff];

/** gzip (RFC 1952) with deflate stored blocks (RFC 1951 BTYPE 00). */
const GZIP_STORED: Framing = {
  prefix: [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255], // deflate, no flags, mtime 0, OS unknown
  blockMax: 65535,
  // BFINAL bit, BTYPE 00, padding to the byte; LEN and its complement, little-endian.
  blockHeader: (n, last) => [last ? 1 : 0, n & 0xff, n >> 8, ~n & 0xff, (~n >> 8) & 0xff],
  trailerSize: 8,
  trailer: (crc, length) => [...le32(crc), ...le32(length)],
};

/** A zstd frame (RFC 8878) of raw blocks. */
const ZSTD_RAW: Framing = {
  // Magic; frame header: no content size, checksum or dictionary; window 2^(10+7) = 128 KiB.
  prefix: [0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3],
  blockMax: 128 * KiB,
  blockHeader: (n, last) => le32((n << 3) | (0 << 1) | (last ? 1 : 0)).slice(0, 3), // size, Raw, last
  trailerSize: 0,
  trailer: () => [],
};

/**
 * Writes a stream of `length` bytes in `framing` (or plain, without one) straight into the final
 * buffer; returns it with the digest of the unframed stream (a layer's diff_id).
 */
function frame(
  framing: Framing | undefined,
  length: number,
  pieces: Iterable<Uint8Array>,
): { bytes: Uint8Array; diffId: string } {
  const blockMax = framing?.blockMax ?? Infinity;
  const blocks = framing ? Math.max(1, Math.ceil(length / blockMax)) : 0;
  const headerSize = framing?.blockHeader(0, false).length ?? 0;
  const out = new Uint8Array((framing?.prefix.length ?? 0) + blocks * headerSize + length + (framing?.trailerSize ?? 0));
  const hash = createHash('sha256');
  let crc = 0;
  let o = 0;
  const emit = (bytes: ArrayLike<number>): void => {
    out.set(bytes, o);
    o += bytes.length;
  };
  let position = 0;
  const startBlockIfDue = (): void => {
    if (framing && position % blockMax === 0) {
      const n = Math.min(blockMax, length - position);
      emit(framing.blockHeader(n, position + n >= length));
    }
  };
  if (framing) emit(framing.prefix);
  if (length === 0) startBlockIfDue();
  for (const piece of pieces) {
    hash.update(piece);
    if (framing) crc = crc32(piece, crc);
    for (let p = 0; p < piece.length;) {
      startBlockIfDue();
      const n = Math.min(blockMax - (position % blockMax), piece.length - p);
      emit(piece.subarray(p, p + n));
      p += n;
      position += n;
    }
  }
  if (framing) emit(framing.trailer(crc, length));
  return { bytes: out, diffId: `sha256:${hash.digest('hex')}` };
}

/**
 * A layer holding one file of `size` random bytes, framed as its media type says (gzip, zstd,
 * else plain tar). `diffId` is the digest of the uncompressed tar, as image configs list it.
 */
function layerOf(seed: string, size: number, mediaType: string): { descriptor: Descriptor; blob: BlobBytes; diffId: string } {
  const tar = tarWithRandomFile(`data/${seed.replaceAll('/', '_')}.bin`, size, seed);
  const framing = mediaType.endsWith('gzip') ? GZIP_STORED : mediaType.endsWith('zstd') ? ZSTD_RAW : undefined;
  const { bytes, diffId } = frame(framing, tar.length, tar.pieces);
  return { ...blobOf(bytes, mediaType), diffId };
}

/** Serialises a manifest. `indent` gives pretty-printed bytes whose digest changes if re-serialised. */
function encodeJson(value: unknown, indent?: number): Uint8Array {
  const text = indent === undefined ? JSON.stringify(value) : `${JSON.stringify(value, null, indent)}\n`;
  return new TextEncoder().encode(text);
}

function blobOf(bytes: Uint8Array, mediaType: string): { descriptor: Descriptor; blob: BlobBytes } {
  const digest = sha256Digest(bytes);
  return { descriptor: { mediaType, digest, size: bytes.length }, blob: { digest, bytes } };
}

function manifestOf(value: unknown, mediaType: string, indent?: number): ManifestBytes {
  const bytes = encodeJson(value, indent);
  return { digest: sha256Digest(bytes), mediaType, bytes };
}

function descriptorOf(manifest: ManifestBytes): Descriptor {
  return { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.bytes.length };
}

/** Joins images (children first), keeping each manifest and blob once, in first-seen order. */
function compose(parts: TestImage[], root: ManifestBytes): TestImage {
  const manifests = new Map<string, ManifestBytes>();
  const blobs = new Map<string, BlobBytes>();
  const foreign = new Map<string, Descriptor>();
  for (const part of parts) {
    for (const m of part.manifests) manifests.set(m.digest, m);
    for (const b of part.blobs) blobs.set(b.digest, b);
    for (const f of part.foreignLayers) foreign.set(f.digest, f);
  }
  manifests.set(root.digest, root);
  return {
    root: descriptorOf(root),
    manifests: [...manifests.values()],
    blobs: [...blobs.values()],
    foreignLayers: [...foreign.values()],
  };
}

// ---------------------------------------------------------------------------------------------
// Single-platform images

export interface ImageOptions {
  /**
   * Number of layers (default 2), each a file of `layerSize` random bytes (default 1 KiB), or
   * explicit sizes. A layer blob is ~1.5 KiB larger: tar header and end, and the framing.
   */
  layers?: number;
  layerSize?: number;
  layerSizes?: number[];
  /** Default: Docker or OCI gzip layer type of the manifest's format. */
  layerMediaType?: string;
  platform?: Platform;
  /** Pretty-print the manifest with this indent. */
  indent?: number;
  annotations?: Record<string, string>;
}

/** A Docker v2 schema2 manifest (`application/vnd.docker.distribution.manifest.v2+json`). */
export function dockerImage(seed: string, options: ImageOptions = {}): TestImage {
  return singleImage('docker', seed, options);
}

/** An OCI image manifest (`application/vnd.oci.image.manifest.v1+json`). */
export function ociImage(seed: string, options: ImageOptions = {}): TestImage {
  return singleImage('oci', seed, options);
}

function singleImage(
  format: 'docker' | 'oci',
  seed: string,
  options: ImageOptions,
  extraLayers: Array<{ descriptor: Descriptor; diffId: string }> = [],
): TestImage {
  const platform = options.platform ?? DEFAULT_PLATFORMS[0]!;
  const sizes = options.layerSizes ?? Array.from({ length: options.layers ?? 2 }, () => options.layerSize ?? KiB);
  const layerType = options.layerMediaType ?? (format === 'docker' ? MediaTypes.dockerLayer : MediaTypes.ociLayer);
  const layers = sizes.map((size, i) => layerOf(`${seed}/layer/${i}`, size, layerType));
  const allLayers = [...extraLayers.map((l) => l.descriptor), ...layers.map((l) => l.descriptor)];
  const diffIds = [...extraLayers.map((l) => l.diffId), ...layers.map((l) => l.diffId)];
  const config = blobOf(
    encodeJson(imageConfig(seed, platform, diffIds)),
    format === 'docker' ? MediaTypes.dockerConfig : MediaTypes.ociConfig,
  );
  const mediaType = format === 'docker' ? MediaTypes.dockerManifest : MediaTypes.ociManifest;
  const manifest = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      config: config.descriptor,
      layers: allLayers,
      ...(options.annotations ? { annotations: options.annotations } : {}),
    },
    mediaType,
    options.indent,
  );
  return {
    root: descriptorOf(manifest),
    manifests: [manifest],
    blobs: [config.blob, ...layers.map((l) => l.blob)],
    foreignLayers: extraLayers.map((l) => l.descriptor).filter((d) => d.urls !== undefined),
  };
}

function imageConfig(seed: string, platform: Platform, diffIds: string[]): object {
  return {
    created: CREATED,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: ['/bin/sh'],
      Labels: { 'test.seed': seed },
    },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map((_, i) => ({ created: CREATED, created_by: `/bin/sh -c #(nop) layer ${i}` })),
  };
}

// ---------------------------------------------------------------------------------------------
// Catalogue

/** A Docker manifest list over one Docker schema2 image per platform. */
export function dockerManifestList(
  seed: string,
  platforms: Platform[] = DEFAULT_PLATFORMS,
  options: { readonly sharedLayers?: boolean } = {},
): TestImage {
  // With sharedLayers every platform's image has the same layers (only its config differs), as
  // with platform-independent content (scripts, data) built for several architectures.
  const children = platforms.map((platform) =>
    dockerImage(options.sharedLayers ? seed : `${seed}/${platformKey(platform)}`, { platform }),
  );
  const mediaType = MediaTypes.dockerManifestList;
  const list = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      manifests: children.map((child, i) => ({ ...child.root, platform: platforms[i] })),
    },
    mediaType,
  );
  return compose(children, list);
}

/**
 * An OCI index as BuildKit pushes it: one OCI image per platform, and per image an attestation
 * manifest (platform unknown/unknown, in-toto layers) that points back at it by annotation.
 */
export function ociIndexWithAttestations(seed: string, platforms: Platform[] = DEFAULT_PLATFORMS): TestImage {
  const images = platforms.map((platform) => ociImage(`${seed}/${platformKey(platform)}`, { platform }));
  const attestations = images.map((image, i) => attestationManifest(`${seed}/${platformKey(platforms[i]!)}`, image.root));
  const mediaType = MediaTypes.ociIndex;
  const index = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      manifests: [
        ...images.map((image, i) => ({ ...image.root, platform: platforms[i] })),
        ...attestations.map((attestation, i) => ({
          ...attestation.root,
          annotations: {
            'vnd.docker.reference.digest': images[i]!.root.digest,
            'vnd.docker.reference.type': 'attestation-manifest',
          },
          platform: { architecture: 'unknown', os: 'unknown' },
        })),
      ],
    },
    mediaType,
  );
  return compose([...images, ...attestations], index);
}

function attestationManifest(seed: string, subject: Descriptor): TestImage {
  const statement = (predicateType: string, predicate: object): Uint8Array =>
    encodeJson({
      _type: 'https://in-toto.io/Statement/v0.1',
      predicateType,
      subject: [{ name: `pkg:docker/test/${seed}`, digest: { sha256: subject.digest.slice('sha256:'.length) } }],
      predicate,
    });
  const layers = [
    { type: 'https://spdx.dev/Document', bytes: statement('https://spdx.dev/Document', { spdxVersion: 'SPDX-2.3', name: seed }) },
    {
      type: 'https://slsa.dev/provenance/v0.2',
      bytes: statement('https://slsa.dev/provenance/v0.2', { builder: { id: 'https://example.com/test-builder' } }),
    },
  ].map(({ type, bytes }) => {
    const layer = blobOf(bytes, MediaTypes.inToto);
    return { ...layer, descriptor: { ...layer.descriptor, annotations: { 'in-toto.io/predicate-type': type } } };
  });
  const config = blobOf(
    encodeJson({
      architecture: 'unknown',
      os: 'unknown',
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.descriptor.digest) },
    }),
    MediaTypes.ociConfig,
  );
  const manifest = manifestOf(
    { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: config.descriptor, layers: layers.map((l) => l.descriptor) },
    MediaTypes.ociManifest,
  );
  return {
    root: descriptorOf(manifest),
    manifests: [manifest],
    blobs: [config.blob, ...layers.map((l) => l.blob)],
    foreignLayers: [],
  };
}

/** Many small layers (default 60 × 4 KiB): per-blob overhead and concurrency. */
export function manyLayersImage(seed: string, options: { count?: number; size?: number } = {}): TestImage {
  return dockerImage(seed, { layers: options.count ?? 60, layerSize: options.size ?? 4 * KiB });
}

/**
 * A Windows-style Docker image whose base layer is foreign: referenced by `urls`, never pushed.
 * The registry accepts it only with `allowForeignUrls`.
 */
export function foreignLayerImage(seed: string): TestImage {
  const base = layerOf(`${seed}/foreign`, 8 * KiB, MediaTypes.dockerForeignLayer);
  const hex = base.descriptor.digest.slice('sha256:'.length);
  const foreign = { ...base, descriptor: { ...base.descriptor, urls: [`https://example.com/foreign-layers/${hex}`] } };
  return singleImage('docker', seed, { platform: { architecture: 'amd64', os: 'windows' }, layers: 1 }, [foreign]);
}

/** An OCI image whose layers are `application/vnd.oci.image.layer.v1.tar+zstd`. */
export function zstdImage(seed: string): TestImage {
  return ociImage(seed, { layerMediaType: MediaTypes.ociZstdLayer });
}

/** OCI's empty descriptor `{}`, the config of artifacts. */
const EMPTY_JSON = new TextEncoder().encode('{}');

export const SIGNATURE_ARTIFACT_TYPE = 'application/vnd.cncf.notary.signature';

/**
 * A signature artifact (OCI 1.1 style): an image manifest with `artifactType`, the empty config
 * and a `subject` pointing at another image. Push it to the same repository as the subject.
 */
export function signatureArtifact(seed: string, subject: Descriptor): TestImage {
  const config = blobOf(EMPTY_JSON, MediaTypes.ociEmpty);
  const envelope = blobOf(
    encodeJson({
      payload: Buffer.from(JSON.stringify({ subject: subject.digest, seed })).toString('base64url'),
      signature: seed,
    }),
    'application/jose+json',
  );
  const mediaType = MediaTypes.ociManifest;
  const manifest = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      artifactType: SIGNATURE_ARTIFACT_TYPE,
      config: config.descriptor,
      layers: [envelope.descriptor],
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
      annotations: { 'org.opencontainers.image.created': CREATED },
    },
    mediaType,
  );
  return {
    root: {
      ...descriptorOf(manifest),
      artifactType: SIGNATURE_ARTIFACT_TYPE,
      annotations: { 'org.opencontainers.image.created': CREATED },
    },
    manifests: [manifest],
    blobs: [config.blob, envelope.blob],
    foreignLayers: [],
  };
}

/**
 * A cosign signature as `cosign sign` stores it without the referrers API: an OCI manifest with a
 * simple-signing payload layer, under the tag `sha256-<hex of the subject>.sig` (see cosignTag).
 */
export function cosignSignature(seed: string, subject: Descriptor): TestImage {
  const payload = blobOf(
    encodeJson({
      critical: {
        identity: { 'docker-reference': seed },
        image: { 'docker-manifest-digest': subject.digest },
        type: 'cosign container image signature',
      },
      optional: null,
    }),
    'application/vnd.dev.cosign.simplesigning.v1+json',
  );
  const config = blobOf(
    encodeJson({ architecture: '', os: '', rootfs: { type: 'layers', diff_ids: [] }, config: {} }),
    MediaTypes.ociConfig,
  );
  const mediaType = MediaTypes.ociManifest;
  const manifest = manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      config: config.descriptor,
      layers: [
        { ...payload.descriptor, annotations: { 'dev.cosignproject.cosign/signature': Buffer.from(seed).toString('base64') } },
      ],
    },
    mediaType,
  );
  return { root: descriptorOf(manifest), manifests: [manifest], blobs: [config.blob, payload.blob], foreignLayers: [] };
}

/** cosign's tag for the signature (`sig`), attestations (`att`) or SBOM (`sbom`) of an image. */
export function cosignTag(subjectDigest: string, kind: 'sig' | 'att' | 'sbom'): string {
  return `${referrersTag(subjectDigest)}.${kind}`;
}

/** The tag of the referrers tag schema (OCI distribution 1.1 fallback): 'sha256-<hex>'. */
export function referrersTag(subjectDigest: string): string {
  return subjectDigest.replace(':', '-');
}

/**
 * The referrers tag-schema index for registries without the referrers API: an OCI index listing
 * the referrers' descriptors (with artifactType and annotations), to be pushed under
 * `referrersTag(subject.digest)`. Includes the referrers' own manifests, pushed first.
 */
export function referrersTagIndex(referrers: TestImage[]): TestImage {
  const mediaType = MediaTypes.ociIndex;
  const index = manifestOf({ schemaVersion: 2, mediaType, manifests: referrers.map((r) => r.root) }, mediaType);
  return compose(referrers, index);
}

/**
 * Pretty-printed manifests (3-space indent, trailing newline; the index's keys in an unusual
 * order), so any re-serialisation changes the digest: an OCI index over one OCI image.
 */
export function prettyPrintedImage(seed: string): TestImage {
  const image = ociImage(seed, { indent: 3 });
  const mediaType = MediaTypes.ociIndex;
  const index = manifestOf(
    { manifests: [{ ...image.root, platform: DEFAULT_PLATFORMS[0] }], mediaType, schemaVersion: 2 },
    mediaType,
    3,
  );
  return compose([image], index);
}

/** Incompressible layers of a given size (default 5 × 40 MiB, for benchmarks). */
export function randomLayersImage(seed: string, options: { count?: number; size?: number } = {}): TestImage {
  return ociImage(seed, { layers: options.count ?? 5, layerSize: options.size ?? 40 * MiB });
}

function platformKey(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('-');
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: seeding and reading back

export interface RegistryRequestOptions {
  /** Used for Basic challenges and to ask a Bearer realm for a token. */
  credentials?: Credentials;
}

/**
 * A minimal authenticating fetch for one registry: answers a 401's Basic or Bearer challenge
 * once per request, asking the token realm for every scope seen so far. Test code only.
 */
export function registrySession(registry: string, options: RegistryRequestOptions = {}) {
  const base = registry.includes('://') ? registry.replace(/\/+$/, '') : `http://${registry}`;
  const scopes = new Set<string>();
  let authorization: string | undefined;

  async function authorize(challenge: string): Promise<boolean> {
    const scheme = challenge.split(' ', 1)[0]!.toLowerCase();
    const params = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
    const basic = options.credentials
      ? `Basic ${Buffer.from(`${options.credentials.username}:${options.credentials.password}`).toString('base64')}`
      : undefined;
    if (scheme === 'basic') {
      if (!basic || authorization === basic) return false;
      authorization = basic;
      return true;
    }
    if (scheme !== 'bearer' || !params.realm) return false;
    const before = scopes.size;
    for (const scope of (params.scope ?? '').split(' ')) if (scope) scopes.add(scope);
    // Already holding a token for all these scopes: asking again would not help.
    if (authorization?.startsWith('Bearer ') && scopes.size === before && params.error !== 'invalid_token') return false;
    const url = new URL(params.realm);
    if (params.service) url.searchParams.set('service', params.service);
    for (const scope of scopes) url.searchParams.append('scope', scope);
    const res = await fetch(url, { headers: basic ? { authorization: basic } : {} });
    if (!res.ok) throw new Error(`token realm answered ${res.status}: ${await res.text()}`);
    const body = (await res.json()) as { token?: string; access_token?: string };
    authorization = `Bearer ${body.token ?? body.access_token}`;
    return true;
  }

  async function request(pathOrUrl: string, init: RequestInit = {}): Promise<Response> {
    const url = new URL(pathOrUrl, base);
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(init.headers);
      if (authorization) headers.set('authorization', authorization);
      const res = await fetch(url, { ...init, headers });
      const challenge = res.headers.get('www-authenticate');
      if (res.status !== 401 || !challenge || attempt > 0 || !(await authorize(challenge))) return res;
      await res.arrayBuffer();
    }
  }

  return { base, fetch: request };
}

export type RegistrySession = ReturnType<typeof registrySession>;

async function expectStatus(res: Response, expected: number[], what: string): Promise<void> {
  if (!expected.includes(res.status)) {
    throw new Error(`${what}: expected ${expected.join('/')}, got ${res.status} ${await res.text()}`);
  }
}

export interface PushOptions extends RegistryRequestOptions {
  /** Tag for the root manifest; without one it is pushed by digest. */
  tag?: string;
}

/**
 * Seeds `repo` with an image: each missing blob by a monolithic upload (POST, then PUT
 * ?digest= with the whole body), then each manifest by digest with its exact bytes and
 * Content-Type = its mediaType, children first, and the root also under `tag`.
 * `registry` is 'http://host:port' or 'host:port'.
 */
export async function pushImage(
  registry: string | RegistrySession,
  repo: string,
  image: TestImage,
  options: PushOptions = {},
): Promise<Descriptor> {
  const session = typeof registry === 'string' ? registrySession(registry, options) : registry;
  for (const blob of image.blobs) await pushBlob(session, repo, blob);
  for (const manifest of image.manifests) {
    const res = await session.fetch(`/v2/${repo}/manifests/${manifest.digest}`, {
      method: 'PUT',
      headers: { 'content-type': manifest.mediaType },
      body: manifest.bytes,
    });
    await expectStatus(res, [201], `PUT manifest ${manifest.digest}`);
    const stored = res.headers.get('docker-content-digest');
    if (stored !== manifest.digest) throw new Error(`registry stored ${manifest.digest} as ${stored}`);
  }
  if (options.tag !== undefined) {
    const root = image.manifests.at(-1)!;
    const res = await session.fetch(`/v2/${repo}/manifests/${options.tag}`, {
      method: 'PUT',
      headers: { 'content-type': root.mediaType },
      body: root.bytes,
    });
    await expectStatus(res, [201], `PUT manifest tag ${options.tag}`);
  }
  return image.root;
}

export async function pushBlob(session: RegistrySession, repo: string, blob: BlobBytes): Promise<void> {
  const head = await session.fetch(`/v2/${repo}/blobs/${blob.digest}`, { method: 'HEAD' });
  if (head.status === 200) return;
  await expectStatus(head, [404], `HEAD blob ${blob.digest}`);
  const start = await session.fetch(`/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await expectStatus(start, [202], `POST upload for ${blob.digest}`);
  await start.arrayBuffer();
  // Location may be absolute or relative and carries state in its query: keep it, add digest.
  const location = new URL(start.headers.get('location') ?? '', session.base);
  location.searchParams.set('digest', blob.digest);
  const put = await session.fetch(location.href, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: blob.bytes,
  });
  await expectStatus(put, [201], `PUT blob ${blob.digest}`);
  await put.arrayBuffer();
}

export interface Fetched {
  status: number;
  headers: Headers;
  bytes: Uint8Array;
}

async function fetched(res: Response): Promise<Fetched> {
  return { status: res.status, headers: res.headers, bytes: new Uint8Array(await res.arrayBuffer()) };
}

/** GET a manifest by tag or digest with the full Accept list. */
export async function fetchManifest(
  registry: string | RegistrySession,
  repo: string,
  reference: string,
  options: RegistryRequestOptions = {},
): Promise<Fetched> {
  const session = typeof registry === 'string' ? registrySession(registry, options) : registry;
  return fetched(await session.fetch(`/v2/${repo}/manifests/${reference}`, { headers: { accept: MANIFEST_ACCEPT } }));
}

/** GET a blob whole. */
export async function fetchBlob(
  registry: string | RegistrySession,
  repo: string,
  digest: string,
  options: RegistryRequestOptions = {},
): Promise<Fetched> {
  const session = typeof registry === 'string' ? registrySession(registry, options) : registry;
  return fetched(await session.fetch(`/v2/${repo}/blobs/${digest}`));
}
