// One repository of one registry, and the distribution API's verbs on it, in the manner of
// go-containerregistry's remote package: the registry, the name and the access (and so the token
// scopes) are bound once; callers ask for manifests and blobs, never build a path or a scope.
// Each verb maps one protocol rule: which statuses are answers, what a 404 means, how much of a
// body may be read, and that a manifest fetched by digest hashes to that digest.

import { readBounded } from '../../lib/body.ts';
import { printable } from '../../lib/text.ts';
import type { RegistryClient, RegistryRequest } from './client.ts';
import { digestOf } from './digest.ts';
import { NotFoundError, PermanentError, RegistryError, classifyError } from './errors.ts';
import { discard, type HttpResponse } from './http.ts';
import { MANIFEST_ACCEPT, MANIFEST_SIZE_LIMIT, MEDIA_TYPES, parseManifest, type Descriptor } from './manifest.ts';
import { withRetries, type RetryPolicy } from './retry.ts';

/** What a copy does with a repository: reads it (pull), or writes into it (pull and push). */
export type Access = 'pull' | 'push';

export interface RepositoryName {
  readonly registry: string;
  /** The path inside the registry: "library/nginx". */
  readonly repository: string;
}

/** A manifest as the registry served it: the exact bytes, their digest and media type. */
export interface FetchedManifest {
  readonly bytes: Uint8Array;
  readonly digest: string;
  readonly mediaType: string;
}

/** How an upload began: the registry mounted the blob, or gave a location to send it to. */
export type UploadStart = { readonly mounted: true } | { readonly mounted: false; readonly location: string };

/** Counts what a copy reads (see copy/limits.ts); throws once the copy has read too much. */
export interface ManifestBudget {
  charge(bytes: number, name: string): void;
}

export interface RepositoryOptions {
  readonly retryPolicy: RetryPolicy;
  /** Ends every request of this handle: a copy's deadline, or nobody waiting for it any more. */
  readonly signal?: AbortSignal;
  readonly budget?: ManifestBudget;
}

const DIGEST = /^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$/;
const TAG_LIST_BODY_LIMIT = 4096;

export class Repository implements RepositoryName {
  readonly registry: string;
  readonly repository: string;
  readonly #client: RegistryClient;
  readonly #scopes: readonly string[];
  readonly #options: RepositoryOptions;

  /** What ends every request of this handle (see RepositoryOptions.signal). */
  get signal(): AbortSignal | undefined {
    return this.#options.signal;
  }

  constructor(client: RegistryClient, name: RepositoryName, access: Access, options: RepositoryOptions) {
    this.registry = name.registry;
    this.repository = name.repository;
    this.#client = client;
    this.#scopes = [access === 'push' ? pushScope(name.repository) : pullScope(name.repository)];
    this.#options = options;
  }

  /** `registry/repository`, as messages name it. */
  toString(): string {
    return `${this.registry}/${this.repository}`;
  }

  /**
   * False only when the registry says the repository does not exist (404 NAME_UNKNOWN on its tag
   * list); anything else, a refusal or an error included, counts as "may exist". A registry may
   * still say so after an interrupted copy left blobs but no tag (distribution does).
   */
  async exists(): Promise<boolean> {
    try {
      const response = await this.#send({
        method: 'GET',
        path: '/tags/list?n=1',
        what: `list tags of ${this}`,
        expect: [200, 404],
      });
      if (response.status === 200) {
        await discard(response);
        return true;
      }
      const { bytes } = await readBounded(response.body, { limit: TAG_LIST_BODY_LIMIT });
      const body = JSON.parse(new TextDecoder().decode(bytes)) as { errors?: { code?: string }[] };
      return body?.errors?.[0]?.code !== 'NAME_UNKNOWN';
    } catch {
      return true;
    }
  }

  /**
   * The digest a tag points at, from a HEAD (which Docker Hub does not count as a pull); a GET
   * when the registry does not say, and then its bytes are kept. A missing tag is permanent.
   */
  async resolve(tag: string): Promise<{ digest: string; manifest?: FetchedManifest }> {
    const head = await this.#headManifest(tag, `resolve ${this}:${tag}`);
    if (head === undefined) throw new NotFoundError(`${this}:${tag} not found (no such tag or repository)`);
    if (head.digest !== undefined && DIGEST.test(head.digest)) return { digest: head.digest };
    const manifest = await this.getManifest(tag);
    return { digest: manifest.digest, manifest };
  }

  /** The digest a tag points at, or undefined when the tag does not exist. */
  async tagDigest(tag: string): Promise<string | undefined> {
    const head = await this.#headManifest(tag, `check tag ${this}:${tag}`);
    if (head === undefined) return undefined;
    return head.digest ?? (await this.getManifest(tag)).digest;
  }

  async hasManifest(digest: string): Promise<boolean> {
    return (await this.#headManifest(digest, `check manifest ${digest} in ${this}`)) !== undefined;
  }

  /** GETs a manifest (at most 4 MiB); by digest, its bytes must hash to that digest. */
  async getManifest(reference: string): Promise<FetchedManifest> {
    const name = this.#nameOf(reference);
    // The body is read inside the retry: a connection dropped mid-manifest is retried too.
    const { bytes, contentType } = await withRetries(
      async () => {
        const response = await this.#send({
          method: 'GET',
          path: `/manifests/${reference}`,
          what: `get manifest ${name}`,
          expect: [200, 404],
          headers: { accept: MANIFEST_ACCEPT },
          followRedirects: true,
        });
        if (response.status === 404) {
          await discard(response);
          throw new NotFoundError(`${name} not found`);
        }
        return { bytes: await readManifestBytes(response, name), contentType: response.headers.get('content-type') };
      },
      { policy: this.#options.retryPolicy, classify: classifyError },
    );
    this.#options.budget?.charge(bytes.byteLength, name);
    const expected = reference.includes(':') ? reference : undefined;
    const digest = digestOf(bytes, expected ?? 'sha256:');
    if (expected !== undefined && digest !== expected) {
      throw new PermanentError(`manifest ${name} does not match its digest (got ${digest})`);
    }
    return { bytes, digest, mediaType: parseManifest(bytes, contentType).mediaType };
  }

  /** PUTs the exact bytes with Content-Type = their media type, under a tag or their digest. */
  async putManifest(reference: string, manifest: FetchedManifest): Promise<HttpResponse> {
    const name = this.#nameOf(reference);
    try {
      const response = await this.#send({
        method: 'PUT',
        path: `/manifests/${reference}`,
        what: `push manifest ${name}`,
        expect: [201, 200, 204],
        headers: { 'content-type': manifest.mediaType },
        body: manifest.bytes,
      });
      await discard(response);
      const stored = response.headers.get('docker-content-digest');
      if (stored && stored !== manifest.digest) {
        throw new PermanentError(`push manifest ${name}: the registry stored ${printable(stored, 150)}, not ${manifest.digest}`);
      }
      return response;
    } catch (error) {
      // An immutable tag (ECR) that already points at this digest is what we wanted.
      if (error instanceof RegistryError && error.status >= 400 && error.status < 500 && !reference.includes(':')) {
        if ((await this.tagDigest(reference)) === manifest.digest) return new Response(null, { status: 200 });
      }
      throw error;
    }
  }

  /** The referrers API's list for a digest, or undefined where the registry has no referrers API. */
  async referrers(digest: string): Promise<Descriptor[] | undefined> {
    let response: HttpResponse;
    try {
      response = await this.#send({
        method: 'GET',
        path: `/referrers/${digest}`,
        what: `list referrers of ${this}@${digest}`,
        expect: [200, 404],
        headers: { accept: MEDIA_TYPES.ociIndex },
      });
    } catch (error) {
      // 400/405 and the like: a registry that predates the API.
      if (error instanceof RegistryError && error.status >= 400 && error.status < 500) return undefined;
      throw error;
    }
    const type = response.headers.get('content-type') ?? '';
    if (response.status !== 200 || !type.startsWith(MEDIA_TYPES.ociIndex)) {
      await discard(response);
      return undefined;
    }
    const bytes = await readManifestBytes(response, `referrers of ${this}@${digest}`);
    this.#options.budget?.charge(bytes.byteLength, `referrers of ${this}@${digest}`);
    return parseManifest(bytes, MEDIA_TYPES.ociIndex).manifests.slice();
  }

  /** Whether the repository holds the blob. `what` names it in errors ("blob … of …"). */
  async hasBlob(digest: string, what: string): Promise<boolean> {
    const head = await this.#send({
      method: 'HEAD',
      path: `/blobs/${digest}`,
      what: `check ${what} in the backup`,
      expect: [200, 404],
      followRedirects: true,
    });
    await discard(head);
    return head.status === 200;
  }

  /** Starts a blob's download; the caller reads (or aborts through `signal`) the body. */
  getBlob(digest: string, what: string, signal: AbortSignal): Promise<HttpResponse> {
    const copy = this.#options.signal;
    return this.#send({
      method: 'GET',
      path: `/blobs/${digest}`,
      what: `download ${what}`,
      expect: [200],
      // Compressed transfer would be undone by fetch and the bytes would no longer hash to the digest.
      headers: { 'accept-encoding': 'identity' },
      signal: copy === undefined ? signal : AbortSignal.any([copy, signal]),
      followRedirects: true,
    });
  }

  /**
   * Starts an upload session, or mounts the blob from another repository of this registry (`from`,
   * which this asks pull access to as well). A registry that cannot mount starts a session instead.
   */
  async startUpload(what: string, mount?: { readonly digest: string; readonly from: string }): Promise<UploadStart> {
    const query = mount ? `?mount=${encodeURIComponent(mount.digest)}&from=${encodeURIComponent(mount.from)}` : '';
    const response = await this.#send({
      method: 'POST',
      path: `/blobs/uploads/${query}`,
      what: `start upload of ${what}`,
      expect: [201, 202],
      headers: { 'content-length': '0' },
      body: new Uint8Array(0),
      ...(mount && { scopes: [...this.#scopes, pullScope(mount.from)] }),
    });
    await discard(response);
    if (response.status === 201) return { mounted: true };
    const location = response.headers.get('location');
    if (!location) throw new RegistryError(`start upload of ${what}: the registry sent no upload location`, 502);
    return { mounted: false, location };
  }

  /** Completes an upload with its whole body (bytes, or a stream of exactly `size` bytes). */
  async finishUpload(
    location: string,
    digest: string,
    size: number,
    body: Uint8Array | ReadableStream<Uint8Array>,
    what: string,
  ): Promise<void> {
    const response = await this.#send({
      method: 'PUT',
      location: withDigest(location, digest),
      what: `upload ${what}`,
      expect: [201, 204],
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body,
      once: true,
    });
    await discard(response);
  }

  /** Sends one chunk of an upload; the answer's Location is where the next goes. */
  async uploadChunk(location: string, offset: number, length: number, body: ReadableStream<Uint8Array>, what: string) {
    const response = await this.#send({
      method: 'PATCH',
      location,
      what: `upload ${what} (bytes ${offset}-${offset + length - 1})`,
      expect: [202, 201, 204],
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(length),
        'content-range': `${offset}-${offset + length - 1}`,
      },
      body,
    });
    await discard(response);
    return response.headers.get('location') ?? location;
  }

  /** Ends a chunked upload: an empty PUT with the digest. */
  async commitChunkedUpload(location: string, digest: string, what: string): Promise<void> {
    const response = await this.#send({
      method: 'PUT',
      location: withDigest(location, digest),
      what: `finish upload of ${what}`,
      expect: [201, 204],
      headers: { 'content-length': '0' },
      body: new Uint8Array(0),
    });
    await discard(response);
  }

  /** HEAD of a manifest: undefined when the registry does not have it, else the digest it names. */
  async #headManifest(reference: string, what: string): Promise<{ digest: string | undefined } | undefined> {
    const head = await this.#send({
      method: 'HEAD',
      path: `/manifests/${reference}`,
      what,
      expect: [200, 404],
      headers: { accept: MANIFEST_ACCEPT },
      followRedirects: true,
    });
    await discard(head);
    if (head.status === 404) return undefined;
    return { digest: head.headers.get('docker-content-digest') ?? undefined };
  }

  /** A request to `path` under /v2/<name>, or to an upload `location` the registry handed out. */
  #send(
    request: Omit<RegistryRequest, 'registry' | 'path' | 'scopes'> &
      ({ readonly path: string } | { readonly location: string }) & { readonly scopes?: readonly string[] },
  ): Promise<HttpResponse> {
    const { scopes, ...rest } = request;
    const signal = request.signal ?? this.#options.signal;
    return this.#client.send({
      ...rest,
      registry: this.registry,
      path: 'location' in request ? request.location : `/v2/${this.repository}${request.path}`,
      scopes: scopes ?? this.#scopes,
      ...(signal && { signal }),
    });
  }

  #nameOf(reference: string): string {
    return `${this}${reference.includes(':') ? '@' : ':'}${reference}`;
  }
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

/** The upload location is opaque: keep its query as sent and add the digest to it. */
function withDigest(location: string, digest: string): string {
  return `${location}${location.includes('?') ? '&' : '?'}digest=${encodeURIComponent(digest)}`;
}

/** A manifest's bytes, refused beyond 4 MiB whatever the registry declares. */
async function readManifestBytes(response: HttpResponse, name: string): Promise<Uint8Array> {
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (declared > MANIFEST_SIZE_LIMIT) {
    await discard(response);
    throw new PermanentError(`manifest ${name} is larger than 4 MiB`);
  }
  const { bytes, truncated } = await readBounded(response.body, { limit: MANIFEST_SIZE_LIMIT });
  if (truncated) throw new PermanentError(`manifest ${name} is larger than 4 MiB`);
  return bytes;
}
