// A registry that misbehaves on purpose: a real HTTP server speaking the distribution API, whose
// repositories each try one thing a hostile or broken registry does (redirects into the internal
// network, error pages that are not a registry's, deep and repetitive indexes, trickling blobs,
// challenges from elsewhere). Beside it, an "internal service" that records every request: the
// tests assert it is never reached. Both listen on loopback; the internal service and the
// "other origin" listen on 127.0.0.2, a different host for every rule that compares hosts.

import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { closeServer, listenOnLoopback } from './ports.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';

export interface Blob {
  readonly digest: string;
  readonly bytes: Uint8Array;
}

export interface Manifest {
  readonly digest: string;
  readonly bytes: Uint8Array;
  readonly mediaType: string;
}

/** What a repository of the hostile registry does, besides serving its manifests and blobs. */
export interface HostileRepository {
  /** Manifests by digest; `tags` point at some of them. */
  readonly manifests: Map<string, Manifest>;
  readonly tags: Map<string, string>;
  readonly blobs: Map<string, Blob>;
  /** Answers before the plain distribution API does; undefined lets it answer. */
  readonly intercept?: (request: IncomingMessage, response: ServerResponse, path: PathInfo) => boolean | Promise<boolean>;
}

export interface PathInfo {
  readonly repository: string;
  readonly kind: 'manifests' | 'blobs' | 'tags' | 'referrers' | 'other';
  readonly reference: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly authorization: string | undefined;
}

export interface HostileRegistry {
  /** "127.0.0.1:PORT": the registry host used in image references. */
  readonly host: string;
  /** "127.0.0.2:PORT": another origin of the same registry's server (a redirect target). */
  readonly otherHost: string;
  /** "127.0.0.2:PORT": the internal service that must never be reached. */
  readonly internalHost: string;
  /** Every request the registry (both origins) received. */
  readonly requests: RecordedRequest[];
  /** Every request the internal service received: stays empty. */
  readonly internalRequests: RecordedRequest[];
  /** Connections of blob downloads the server saw closed by the client (a cancelled copy). */
  readonly closedDownloads: string[];
  add(name: string, repository: HostileRepository): void;
  stop(): Promise<void>;
}

export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function blobOf(text: string): Blob {
  const bytes = new TextEncoder().encode(text);
  return { digest: sha256(bytes), bytes };
}

export function manifestOf(json: unknown, mediaType = OCI_MANIFEST): Manifest {
  const bytes = new TextEncoder().encode(JSON.stringify(json));
  return { digest: sha256(bytes), bytes, mediaType };
}

/** An image: a config and `layers` (each `size` bytes), in OCI form. */
export function imageOf(seed: string, layers = 1, size = 64): { manifest: Manifest; blobs: Blob[] } {
  const config = blobOf(JSON.stringify({ architecture: 'amd64', os: 'linux', seed }));
  const layerBlobs = Array.from({ length: layers }, (_, i) => blobOf(`${seed}/${i}/`.padEnd(size, '.')));
  const manifest = manifestOf({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.bytes.byteLength },
    layers: layerBlobs.map((blob) => ({ mediaType: OCI_LAYER, digest: blob.digest, size: blob.bytes.byteLength })),
  });
  return { manifest, blobs: [config, ...layerBlobs] };
}

/** An index listing `children` (each as many times as it appears), padded with an annotation to `padTo` bytes. */
export function indexOf(children: readonly Manifest[], padTo = 0): Manifest {
  const body = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: children.map((child) => ({ mediaType: child.mediaType, digest: child.digest, size: child.bytes.byteLength })),
    annotations: { padding: '' },
  };
  const base = JSON.stringify(body).length;
  body.annotations.padding = 'x'.repeat(Math.max(0, padTo - base));
  return manifestOf(body, OCI_INDEX);
}

/** A repository serving these manifests (the last one tagged `tag`) and blobs. */
export function repositoryOf(
  manifests: readonly Manifest[],
  blobs: readonly Blob[],
  options: { tag?: string; intercept?: HostileRepository['intercept'] } = {},
): HostileRepository {
  const root = manifests.at(-1);
  return {
    manifests: new Map(manifests.map((manifest) => [manifest.digest, manifest])),
    tags: new Map(root ? [[options.tag ?? 'v1', root.digest]] : []),
    blobs: new Map(blobs.map((blob) => [blob.digest, blob])),
    ...(options.intercept && { intercept: options.intercept }),
  };
}

export async function startHostileRegistry(): Promise<HostileRegistry> {
  const repositories = new Map<string, HostileRepository>();
  const requests: RecordedRequest[] = [];
  const internalRequests: RecordedRequest[] = [];
  const closedDownloads: string[] = [];
  const record = (into: RecordedRequest[], request: IncomingMessage) =>
    into.push({ method: request.method ?? '', url: request.url ?? '', authorization: request.headers.authorization });

  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    record(requests, request);
    const path = parsePath(new URL(request.url ?? '/', 'http://registry').pathname);
    if (path === undefined) return plain(response, 200, '{}', 'application/json'); // GET /v2/
    const repository = repositories.get(path.repository);
    if (repository === undefined) return ociError(response, 404, 'NAME_UNKNOWN', 'repository name not known to registry');
    if (repository.intercept && (await repository.intercept(request, response, path))) return;
    if (path.kind === 'manifests') {
      const digest = path.reference.includes(':') ? path.reference : repository.tags.get(path.reference);
      const manifest = digest === undefined ? undefined : repository.manifests.get(digest);
      if (manifest === undefined) return ociError(response, 404, 'MANIFEST_UNKNOWN', 'manifest unknown');
      response.writeHead(200, {
        'content-type': manifest.mediaType,
        'content-length': manifest.bytes.byteLength,
        'docker-content-digest': manifest.digest,
      });
      return response.end(request.method === 'HEAD' ? undefined : manifest.bytes);
    }
    if (path.kind === 'blobs') {
      const blob = repository.blobs.get(path.reference);
      if (blob === undefined) return ociError(response, 404, 'BLOB_UNKNOWN', 'blob unknown');
      response.on('close', () => {
        if (!response.writableFinished) closedDownloads.push(`${path.repository}@${path.reference}`);
      });
      response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.bytes.byteLength });
      return response.end(request.method === 'HEAD' ? undefined : blob.bytes);
    }
    if (path.kind === 'referrers') return ociError(response, 404, 'NOT_FOUND', 'no referrers API');
    return ociError(response, 404, 'NOT_FOUND', 'not found');
  };

  const servers: Server[] = [];
  const listen = async (host: string, onRequest: (request: IncomingMessage, response: ServerResponse) => void) => {
    const server = createServer(onRequest);
    servers.push(server);
    return `${host}:${await listenOnLoopback(server, host)}`;
  };
  const serve = (request: IncomingMessage, response: ServerResponse) =>
    void handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) plain(response, 500, String(error), 'text/plain');
      else response.destroy();
    });
  const host = await listen('127.0.0.1', serve);
  const otherHost = await listen('127.0.0.2', serve);
  const internalHost = await listen('127.0.0.2', (request, response) => {
    record(internalRequests, request);
    plain(response, 200, 'ADMIN CONSOLE — postgres://admin:s3cret@db.internal:5432/prod', 'text/plain');
  });

  return {
    host,
    otherHost,
    internalHost,
    requests,
    internalRequests,
    closedDownloads,
    add: (name, repository) => void repositories.set(name, repository),
    stop: async () => {
      await Promise.all(servers.map(closeServer));
    },
  };
}

function parsePath(pathname: string): PathInfo | undefined {
  const match = /^\/v2\/(.+?)\/(manifests|blobs|tags|referrers)\/(.*)$/.exec(pathname);
  if (!match) return pathname === '/v2/' ? undefined : { repository: '', kind: 'other', reference: '' };
  return { repository: match[1]!, kind: match[2] as PathInfo['kind'], reference: match[3]! };
}

export function ociError(response: ServerResponse, status: number, code: string, message: string, headers = {}): void {
  plain(response, status, JSON.stringify({ errors: [{ code, message }] }), 'application/json', headers);
}

export function plain(response: ServerResponse, status: number, body: string, type: string, headers = {}): void {
  response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), ...headers });
  response.end(body);
}

/** Sends `bytes` a `chunk` at a time, one every `everyMs`, until done or the client goes away. */
export function trickle(response: ServerResponse, bytes: Uint8Array, chunk: number, everyMs: number): void {
  response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.byteLength });
  let offset = 0;
  const timer = setInterval(() => {
    if (response.destroyed) return clearInterval(timer);
    response.write(bytes.subarray(offset, offset + chunk));
    offset += chunk;
    if (offset >= bytes.byteLength) {
      clearInterval(timer);
      response.end();
    }
  }, everyMs);
  response.on('close', () => clearInterval(timer));
}
