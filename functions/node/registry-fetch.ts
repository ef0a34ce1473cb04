// The registry fetch of the Node entry point: undici's request API with explicit pools, answering
// with a light object the registry layer reads (HttpResponse). Why not fetch: see registryFetch.

import { lookup, type LookupAddress, type LookupOptions } from 'node:dns';
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import type { FunctionConfig } from '../config.ts';
import { slotUnits } from '../copy/blob.ts';
import { ForbiddenAddressError, isForbiddenAddress } from '../registry/egress.ts';
import type { FetchLike, HttpResponse } from '../registry/http.ts';

/** Statuses whose responses carry no content (a Response refuses a body for them). */
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/**
 * The fetch the engine speaks, on undici's request API with explicit pools: a few connections per
 * registry, kept alive between blobs. Not undici's fetch, for two costs it has on this path:
 * - it copies every chunk of a response body into a fresh buffer (the fetch spec's "enqueue a
 *   Uint8Array wrapping an ArrayBuffer containing bytes"), so a blob copy allocates its size twice;
 *   the garbage piles up until V8's external-memory limit forces a collection (tens of MiB of
 *   RSS, and fresh pages touched for every chunk);
 * - it closes the connection after every HEAD (undici's guard against servers that answer HEAD
 *   with a body), and the engine asks a HEAD for every blob and manifest: a new TCP (and TLS)
 *   connection each time. Registries answer HEAD by the book, so HEAD keeps the connection.
 * Redirects are never followed here (the engine follows them itself, without Authorization on
 * another host), as with redirect: 'manual'.
 */
export function registryFetch(config: FunctionConfig): FetchLike {
  // Every blob transfer may hold two connections to one registry (a download, and an upload whose
  // body is that download) when source and backup share a host: a pool smaller than that could
  // fill with uploads waiting for downloads that wait for a connection. Idle ones close after 30 s.
  const transfers = slotUnits(config.transferConcurrency, config.smallBlobsPerSlot);
  const dispatcher = new Agent({
    connections: 2 * transfers + 8,
    keepAliveTimeout: 30_000,
    connectTimeout: 15_000,
    // A body that stops coming for the stall time ends the request: manifests and error pages
    // too (blob transfers and answers to other requests are watched by the engine itself, the
    // same way on Workers).
    bodyTimeout: config.limits.stallMs,
    connect: { lookup: guardedLookup() },
  });
  return async (input, init = {}) => {
    const url = input instanceof URL ? input : new URL(input instanceof Request ? input.url : input);
    const method = (init.method ?? 'GET').toUpperCase() as Dispatcher.HttpMethod;
    const response = await dispatcher.request({
      origin: url.origin,
      path: `${url.pathname}${url.search}`,
      method,
      headers: headerRecord(init.headers),
      // undici takes async iterables (a Web stream is one); its types list Readable only.
      body: requestBody(init.body) as string | Uint8Array | Readable | null,
      signal: init.signal ?? null,
      ...(method === 'HEAD' && { reset: false }),
    });
    // An answer with nothing to read (every upload POST and PUT) gets no stream: reading it to the
    // end here returns the connection, and cancelling a stream nobody read would abort it instead.
    const empty = method === 'HEAD' || NULL_BODY_STATUSES.has(response.statusCode) || response.headers['content-length'] === '0';
    if (empty) await response.body.dump();
    return new RegistryAnswer(response.statusCode, response.headers, empty ? null : response.body);
  };
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * DNS resolution for every connection, refusing a name that resolves to a link-local or cloud
 * metadata address. The address checked is the one the socket then connects to (no second lookup
 * an attacker's DNS could answer differently). Literal addresses never get here: the registry
 * client checks those.
 */
export function guardedLookup(resolve: typeof lookup = lookup) {
  return (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    resolve(hostname, { ...options }, (error, address, family) => {
      if (error) return callback(error, address, family);
      const addresses = Array.isArray(address) ? address.map((entry) => entry.address) : [address];
      const forbidden = addresses.find((candidate) => isForbiddenAddress(candidate));
      if (forbidden !== undefined) return callback(new ForbiddenAddressError(forbidden), address, family);
      callback(null, address, family);
    });
  };
}

type HeaderFields = Record<string, string | string[] | undefined>;

/**
 * undici's answer as the engine reads it. No Response and Headers objects per request: they cost
 * more CPU than a small blob's bytes (header validation, and a Web stream per body even when the
 * body is read whole), and the engine asks thousands of small requests of a registry.
 */
class RegistryAnswer implements HttpResponse {
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  readonly #raw: Dispatcher.ResponseData['body'] | null;
  /** The body as a Web stream, made when first asked for; null once read whole. */
  #stream: ReadableStream<Uint8Array> | null | undefined;

  constructor(status: number, fields: HeaderFields, raw: Dispatcher.ResponseData['body'] | null) {
    this.status = status;
    // undici gives header names in lowercase, repeated fields as arrays (fetch joins them with ", ").
    this.headers = {
      get: (name) => {
        const value = fields[name.toLowerCase()];
        return value === undefined ? null : Array.isArray(value) ? value.join(', ') : value;
      },
    };
    this.#raw = raw;
    if (!raw) this.#stream = null;
  }

  get ok(): boolean {
    return this.status >= 200 && this.status < 300;
  }

  get body(): ReadableStream<Uint8Array> | null {
    if (this.#stream === undefined) this.#stream = webStream(this.#raw!);
    return this.#stream;
  }

  async arrayBuffer(): Promise<ArrayBuffer> {
    if (this.#stream) return new Response(this.#stream).arrayBuffer();
    if (!this.#raw) return new ArrayBuffer(0);
    this.#stream = null;
    return this.#raw.arrayBuffer(); // undici refuses a second read, as fetch does
  }

  async text(): Promise<string> {
    return new TextDecoder().decode(await this.arrayBuffer());
  }

  async json(): Promise<unknown> {
    return JSON.parse(await this.text());
  }
}

/** The registry client sends a plain record; anything else is copied into one. */
function headerRecord(headers: RequestInit['headers']): Record<string, string> {
  if (headers === undefined) return {};
  if (headers instanceof Headers || Array.isArray(headers)) return Object.fromEntries(headers);
  return headers as Record<string, string>;
}

function requestBody(body: RequestInit['body']): string | Uint8Array | AsyncIterable<Uint8Array> | null {
  if (body === undefined || body === null) return null;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  if (body instanceof ReadableStream) return body as ReadableStream<Uint8Array>;
  throw new TypeError('registry requests send a string, bytes or a stream');
}

/** A Web stream over a Node stream, passing its buffers on as they are (no copy). */
function webStream(body: Readable): ReadableStream<Uint8Array> {
  // Errors reach the reader through the iterator; this keeps one nobody reads (an aborted
  // download) from being an uncaught 'error' event.
  body.on('error', () => {});
  const chunks = body[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await chunks.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      body.destroy(reason instanceof Error ? reason : undefined);
    },
  });
}
