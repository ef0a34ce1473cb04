// One HTTP exchange with a registry: URL building (HTTPS unless the registry is listed insecure),
// authorization, one re-auth on 401, redirects that never carry Authorization to another host,
// and retries of replayable requests on 408/429/5xx and dropped connections.

import { registryApiHost } from '../contract/index.ts';
import { Authenticator } from './auth.ts';
import type { CredentialSource } from './credentials.ts';
import { classifyError, RegistryError } from './errors.ts';
import { discard, type FetchLike, type HttpResponse } from './http.ts';
import { DEFAULT_RETRY_POLICY, withRetries, type RetryPolicy } from './retry.ts';

export interface RegistryClientOptions {
  readonly fetch: FetchLike;
  readonly credentials: CredentialSource;
  /** host:port of registries spoken to over plain HTTP. */
  readonly insecureRegistries?: ReadonlySet<string>;
  readonly retryPolicy?: RetryPolicy;
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
      const response = await this.#exchange(request, authorization);
      const canRetry = !reauthorized && !(request.body instanceof ReadableStream);
      if (response.status === 401 && canRetry) {
        const next = await this.#auth.unauthorized(request.registry, response, scopes);
        await discard(response);
        if (next) {
          scopes = next;
          reauthorized = true;
          continue;
        }
        throw new RegistryError(`${request.what}: HTTP 401 (authentication refused)`, 401, 'UNAUTHORIZED');
      }
      if (response.status === 403 && canRetry && this.#auth.renewCredentials(request.registry)) {
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

  /** One request and the redirects that follow it. */
  async #exchange(request: RegistryRequest, authorization: string | undefined): Promise<HttpResponse> {
    const registryOrigin = new URL(this.baseUrl(request.registry)).origin;
    let url = new URL(request.path, this.baseUrl(request.registry));
    for (let redirects = 0; ; redirects++) {
      // A plain record: a Headers object per request costs validation work that adds up over
      // thousands of small requests. Names here are lowercase, as request.headers' are.
      const headers: Record<string, string> = { ...request.headers };
      if (this.#options.userAgent) headers['user-agent'] = this.#options.userAgent;
      // Authorization belongs to the registry: a redirect to blob storage (ECR → S3) goes without it.
      if (authorization && url.origin === registryOrigin) headers.authorization = authorization;
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
      const response = await this.#options.fetch(url, init);
      const location = response.headers.get('location');
      const isRedirect = [301, 302, 303, 307, 308].includes(response.status) && location;
      if (!isRedirect || (request.method !== 'GET' && request.method !== 'HEAD')) return response;
      if (redirects >= MAX_REDIRECTS) {
        await discard(response);
        throw new RegistryError(`${request.what}: too many redirects`, 310);
      }
      await discard(response);
      const next = new URL(location, url);
      if (next.protocol !== 'https:' && next.protocol !== 'http:') {
        throw new RegistryError(`${request.what}: redirect to an unsupported scheme`, 310);
      }
      url = next;
    }
  }
}
