// A registry as a function: a FetchLike that answers from handlers and records every request, so
// the registry layer's protocol rules (statuses, scopes, redirects, credentials) are tested in
// unit tests without a server. The real registries test the rest (test/integration).

import type { FetchLike } from '../../functions/registry/http.ts';

export interface RecordedRequest {
  readonly method: string;
  readonly url: URL;
  readonly headers: Readonly<Record<string, string>>;
}

/** Answers one request, or returns undefined to let the next handler (or the 404) answer. */
export type Handler = (request: RecordedRequest) => Response | undefined | Promise<Response | undefined>;

export class FakeRegistry {
  readonly requests: RecordedRequest[] = [];
  readonly #handlers: Handler[] = [];

  /** Handlers are asked in the order added; nobody answering is a 404 with an OCI error. */
  on(handler: Handler): this {
    this.#handlers.push(handler);
    return this;
  }

  /** Answers `method` requests whose host and path match. */
  route(method: string, hostAndPath: string | RegExp, answer: (request: RecordedRequest) => Response): this {
    return this.on((request) => {
      if (request.method !== method) return undefined;
      const target = `${request.url.host}${request.url.pathname}`;
      const matches = typeof hostAndPath === 'string' ? target === hostAndPath : hostAndPath.test(target);
      return matches ? answer(request) : undefined;
    });
  }

  readonly fetch: FetchLike = async (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : input);
    const headers = Object.fromEntries(new Headers(init.headers as ConstructorParameters<typeof Headers>[0]).entries());
    const request = { method: (init.method ?? 'GET').toUpperCase(), url, headers };
    this.requests.push(request);
    if (init.body instanceof ReadableStream) await new Response(init.body).arrayBuffer();
    for (const handler of this.#handlers) {
      const response = await handler(request);
      if (response !== undefined) return response;
    }
    return ociError(404, 'NAME_UNKNOWN', 'repository name not known to registry');
  };

  /** The requests sent to a host, as "METHOD path?query". */
  sentTo(host: string): string[] {
    return this.requests.filter((r) => r.url.host === host).map((r) => `${r.method} ${r.url.pathname}${r.url.search}`);
  }
}

export function ociError(status: number, code: string, message: string, headers: Record<string, string> = {}): Response {
  return Response.json({ errors: [{ code, message }] }, { status, headers });
}
