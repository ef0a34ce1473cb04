// One HTTP exchange with a registry: URL building (HTTPS unless the registry is listed insecure),
// authorization, one re-auth on 401, redirects where registries use them (never carrying
// Authorization to another host, never to plain HTTP or a metadata address), and retries of
// replayable requests on 408/429/5xx and dropped connections.

import { registryApiHost } from '../contract/index.ts';
import { Authenticator } from './auth.ts';
import type { CredentialSource } from './credentials.ts';
import { refuseRedirect, isForbiddenAddress } from './egress.ts';
import { classifyError, PermanentError, RegistryError, StallError, TransportError } from './errors.ts';
import { discard, type FetchLike, type HttpResponse } from './http.ts';
import { DEFAULT_RETRY_POLICY, withRetries, type RetryPolicy } from './retry.ts';

export interface RegistryClientOptions {
  readonly fetch: FetchLike;
  readonly credentials: CredentialSource;
  /** host:port of registries spoken to over plain HTTP. */
  readonly insecureRegistries?: ReadonlySet<string>;
  /**
   * host[:port] of the registries the operator configured (the backup, INSECURE_REGISTRIES, those
   * with credentials): a redirect may go to one of them over plain HTTP.
   */
  readonly configuredHosts?: ReadonlySet<string>;
  readonly retryPolicy?: RetryPolicy;
  /** A request without an answer (its headers) this long after it was sent is given up. */
  readonly stallMs?: number;
  readonly onRetry?: (info: { registry: string; what: string; attempt: number; delayMs: number; error: unknown }) => void;
  readonly userAgent?: string;
}

export interface RegistryRequest {
  readonly registry: string;
  readonly method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** "/v2/…", or an absolute URL the registry handed out (upload locations). */
  readonly path: string;
  readonly scopes: readonly string[];
  /** For error messages and logs: "GET manifest quay.io/x:1". Never a URL. */
  readonly what: string;
  /** Statuses that are answers; any other is an error. */
  readonly expect: readonly number[];
  /** Lowercase names. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Bytes can be sent again; a stream cannot, so a request with a stream is never retried here. */
  readonly body?: Uint8Array | ReadableStream<Uint8Array>;
  /** Not retried here: the caller retries the whole operation (a failed upload's location may be gone). */
  readonly once?: boolean;
  /** Follow redirects (blob and manifest reads, which registries send to storage); else a 3xx is an answer. */
  readonly followRedirects?: boolean;
  readonly signal?: AbortSignal;
}

const MAX_REDIRECTS = 5;

export class RegistryClient {
  readonly #options: RegistryClientOptions;
  readonly #auth: Authenticator;
  readonly #policy: RetryPolicy;

  constructor(options: RegistryClientOptions) {
    this.#options = options;
    this.#policy = options.retryPolicy ?? DEFAULT_RETRY_POLICY;
    this.#auth = new Authenticator({
      fetch: options.fetch,
      credentials: options.credentials,
      isInsecure: (registry) => this.isInsecure(registry),
    });
  }

  isInsecure(registry: string): boolean {
    return this.#options.insecureRegistries?.has(registryApiHost(registry)) ?? false;
  }

  baseUrl(registry: string): string {
    return `${this.isInsecure(registry) ? 'http' : 'https'}://${registryApiHost(registry)}`;
  }

  /** Sends the request; the answer's status is one of `expect`, or this throws a RegistryError. */
  async send(request: RegistryRequest): Promise<HttpResponse> {
    const replayable = !(request.body instanceof ReadableStream);
    if (!replayable || request.once) return this.#sendOnce(request);
    return withRetries(() => this.#sendOnce(request), {
      policy: this.#policy,
      classify: classifyError,
      onRetry: ({ attempt, delayMs, error }) =>
        this.#options.onRetry?.({ registry: request.registry, what: request.what, attempt, delayMs, error }),
    });
  }

  async #sendOnce(request: RegistryRequest): Promise<HttpResponse> {
    let scopes = request.scopes;
    let reauthorized = false;
    for (;;) {
      const authorization = await this.#auth.authorization(request.registry, scopes);
      const { response, fromRegistry } = await this.#exchange(request, authorization);
      if (response.status === 401 && !fromRegistry) {
        // Only the registry itself may ask for credentials: a challenge from where it redirected
        // to would send them (or a token realm of its choosing) elsewhere.
        await discard(response);
        throw new RegistryError(`${request.what}: HTTP 401 from where the registry redirected to`, 401, 'UNAUTHORIZED');
      }
      const canRetry = !reauthorized && !(request.body instanceof ReadableStream);
      if (response.status === 401 && canRetry) {
        const next = await this.#auth.unauthorized(request.registry, response, scopes, authorization !== undefined);
        await discard(response);
        if (next) {
          scopes = next;
          reauthorized = true;
          continue;
        }
        throw new RegistryError(`${request.what}: HTTP 401 (authentication refused)`, 401, 'UNAUTHORIZED');
      }
      if (response.status === 403 && canRetry && fromRegistry && this.#auth.renewCredentials(request.registry)) {
        await discard(response);
        reauthorized = true;
        continue;
      }
      if (!request.expect.includes(response.status)) {
        throw await RegistryError.fromResponse(response, request.what);
      }
      return response;
    }
  }

  /** One request and the redirects that follow it; `fromRegistry`: the answer is the registry's own. */
  async #exchange(
    request: RegistryRequest,
    authorization: string | undefined,
  ): Promise<{ response: HttpResponse; fromRegistry: boolean }> {
    const registryOrigin = new URL(this.baseUrl(request.registry)).origin;
    let url = new URL(request.path, this.baseUrl(request.registry));
    if (isForbiddenAddress(url.hostname)) {
      throw new PermanentError(`${request.what}: refused, ${url.hostname} is a link-local or cloud metadata address`);
    }
    for (let redirects = 0; ; redirects++) {
      // A plain record: a Headers object per request costs validation work that adds up over
      // thousands of small requests. Names here are lowercase, as request.headers' are.
      const headers: Record<string, string> = { ...request.headers };
      if (this.#options.userAgent) headers['user-agent'] = this.#options.userAgent;
      // Authorization belongs to the registry: a redirect to blob storage (ECR → S3) goes without it.
      const fromRegistry = url.origin === registryOrigin;
      if (authorization && fromRegistry) headers.authorization = authorization;
      const init: RequestInit & { duplex?: 'half' } = {
        method: request.method,
        headers,
        redirect: 'manual',
        ...(request.signal && { signal: request.signal }),
      };
      if (request.body !== undefined) {
        init.body = request.body as RequestInit['body'];
        if (request.body instanceof ReadableStream) init.duplex = 'half';
      }
      const response = await this.#fetch(url, init, request.what);
      const location = response.headers.get('location');
      const isRedirect = [301, 302, 303, 307, 308].includes(response.status) && location;
      if (!isRedirect || !request.followRedirects) return { response, fromRegistry };
      await discard(response);
      if (redirects >= MAX_REDIRECTS) throw new RegistryError(`${request.what}: too many redirects`, 310);
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new RegistryError(`${request.what}: a redirect to an invalid URL`, 310);
      }
      const refusal = refuseRedirect(next, { isConfiguredHost: (host) => this.#isConfiguredHost(host) });
      if (refusal !== undefined) throw new PermanentError(`${request.what}: refused ${refusal}`);
      url = next;
    }
  }

  /**
   * The fetch, with what went wrong below HTTP said without detail: whether a connection was
   * refused, reset or failed its TLS handshake is what tells an open port from a closed one, and
   * the result goes back to whoever named the registry. The detail stays in the operator's log.
   */
  async #fetch(url: URL, init: RequestInit, what: string): Promise<HttpResponse> {
    // A server that accepts the request and never answers holds whatever waits for it. Not for a
    // streamed upload, whose answer comes only after its body: the transfer watches that.
    const { stallMs } = this.#options;
    const watched = stallMs !== undefined && !(init.body instanceof ReadableStream);
    const unanswered = watched ? new AbortController() : undefined;
    const timer =
      unanswered &&
      setTimeout(() => unanswered.abort(new StallError(`${what}: no answer within ${Math.round(stallMs! / 1000)} s`)), stallMs);
    const signal = unanswered
      ? init.signal
        ? AbortSignal.any([init.signal, unanswered.signal])
        : unanswered.signal
      : init.signal;
    try {
      return await this.#options.fetch(url, signal ? { ...init, signal } : init);
    } catch (error) {
      if (signal?.aborted) throw signal.reason ?? error;
      if (error instanceof PermanentError || error instanceof RegistryError) throw error;
      const refused = forbiddenAddressIn(error);
      if (refused !== undefined) throw new PermanentError(`${what}: refused, ${url.hostname} resolves to ${refused}`);
      throw new TransportError(`${what}: cannot reach ${url.host}`, error);
    } finally {
      clearTimeout(timer);
    }
  }

  #isConfiguredHost(host: string): boolean {
    return (this.#options.configuredHosts?.has(host) ?? false) || (this.#options.insecureRegistries?.has(host) ?? false);
  }
}

/** The forbidden address a connection refused (ForbiddenAddressError, somewhere in the cause chain). */
function forbiddenAddressIn(error: unknown): string | undefined {
  for (let current = error, depth = 0; current instanceof Error && depth < 5; current = current.cause, depth++) {
    if (current.name === 'ForbiddenAddressError') return current.message;
  }
  return undefined;
}
