// What the engine needs to know about manifests: the media types it asks for, and which blobs and
// child manifests a manifest refers to. Manifests themselves are never re-serialised: the engine
// moves the exact bytes it was served, so digests stay the same.

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  ociArtifact: 'application/vnd.oci.artifact.manifest.v1+json',
} as const;

/** Every manifest kind we copy, best first. */
export const MANIFEST_ACCEPT = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerList,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifest,
  MEDIA_TYPES.ociArtifact,
].join(', ');

const INDEX_TYPES: ReadonlySet<string> = new Set([MEDIA_TYPES.ociIndex, MEDIA_TYPES.dockerList]);
const MANIFEST_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerList,
  MEDIA_TYPES.dockerManifest,
  MEDIA_TYPES.ociArtifact,
]);

/** Registries refuse larger manifests (ECR, Docker Hub, distribution all stop at 4 MiB). */
export const MANIFEST_SIZE_LIMIT = 4 * 1024 * 1024;

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly urls?: readonly string[];
  readonly annotations?: Readonly<Record<string, string>>;
  readonly artifactType?: string;
  readonly platform?: unknown;
}

export interface ParsedManifest {
  readonly mediaType: string;
  /** Child manifests (an index's platforms and attestations), to push before the parent. */
  readonly manifests: readonly Descriptor[];
  /** Blobs to copy: config and layers, foreign layers excluded. */
  readonly blobs: readonly Descriptor[];
  /** Foreign (non-distributable) layers: they stay URLs and are not copied. */
  readonly foreignLayers: readonly Descriptor[];
  readonly subject?: Descriptor;
}

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

export function isIndexType(mediaType: string): boolean {
  return INDEX_TYPES.has(mediaType);
}

export function isManifestType(mediaType: string): boolean {
  return MANIFEST_TYPES.has(mediaType);
}

/**
 * Parses manifest bytes. The media type comes from the manifest's own field, else from the
 * Content-Type the registry sent, else from its shape (OCI allows the field to be absent).
 */
export function parseManifest(bytes: Uint8Array, contentType?: string | null): ParsedManifest {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new ManifestError('manifest is not valid JSON');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new ManifestError('manifest is not a JSON object');
  if (json.schemaVersion === 1) throw new ManifestError('Docker schema 1 manifests are not supported (deprecated since 2017)');

  const declared = typeof json.mediaType === 'string' ? json.mediaType : undefined;
  const served = contentType?.split(';')[0]?.trim().toLowerCase();
  const mediaType =
    declared ??
    (served && isManifestType(served) ? served : undefined) ??
    (Array.isArray(json.manifests) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest);
  if (!isManifestType(mediaType)) throw new ManifestError(`unsupported manifest media type "${mediaType}"`);

  const subject = json.subject === undefined ? undefined : descriptor(json.subject, 'subject');
  if (isIndexType(mediaType)) {
    const manifests = list(json.manifests, 'manifests').map((d, i) => descriptor(d, `manifests[${i}]`));
    return { mediaType, manifests, blobs: [], foreignLayers: [], ...(subject && { subject }) };
  }

  const referenced: Descriptor[] = [];
  if (json.config !== undefined) referenced.push(descriptor(json.config, 'config'));
  const layerField = mediaType === MEDIA_TYPES.ociArtifact ? json.blobs : json.layers;
  list(layerField ?? [], 'layers').forEach((d, i) => referenced.push(descriptor(d, `layers[${i}]`)));
  const blobs = referenced.filter((d) => !isForeign(d));
  const foreignLayers = referenced.filter(isForeign);
  return { mediaType, manifests: [], blobs: uniqueByDigest(blobs), foreignLayers, ...(subject && { subject }) };
}

/**
 * A layer the registry is not expected to hold: a non-distributable media type with URLs to fetch
 * it from elsewhere (Windows base layers).
 */
export function isForeign(descriptor: Descriptor): boolean {
  const nonDistributable =
    descriptor.mediaType.startsWith('application/vnd.docker.image.rootfs.foreign.') ||
    descriptor.mediaType.startsWith('application/vnd.oci.image.layer.nondistributable.');
  return nonDistributable && (descriptor.urls?.length ?? 0) > 0;
}

function descriptor(value: unknown, where: string): Descriptor {
  if (typeof value !== 'object' || value === null) throw new ManifestError(`${where}: not a descriptor`);
  const d = value as Record<string, unknown>;
  if (typeof d.digest !== 'string' || !/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(d.digest)) {
    throw new ManifestError(`${where}: invalid digest`);
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw new ManifestError(`${where}: invalid size`);
  }
  if (typeof d.mediaType !== 'string') throw new ManifestError(`${where}: missing mediaType`);
  return {
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
    ...(Array.isArray(d.urls) && { urls: d.urls.filter((u): u is string => typeof u === 'string') }),
    ...(typeof d.annotations === 'object' && d.annotations !== null && { annotations: d.annotations as Record<string, string> }),
    ...(typeof d.artifactType === 'string' && { artifactType: d.artifactType }),
    ...(d.platform !== undefined && { platform: d.platform }),
  };
}

function list(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new ManifestError(`${where}: not a list`);
  return value;
}

function uniqueByDigest(descriptors: Descriptor[]): Descriptor[] {
  const seen = new Set<string>();
  return descriptors.filter((d) => !seen.has(d.digest) && (seen.add(d.digest), true));
}
