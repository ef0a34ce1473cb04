// The HTTP surface the registry layer speaks: a fetch, and the part of an answer it reads. A fetch
// Response is one; on Node, the function answers with a lighter object over undici's response
// (functions/node/registry-fetch.ts).

export interface HttpResponse {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  readonly body: ReadableStream<Uint8Array> | null;
  text(): Promise<string>;
  json(): Promise<unknown>;
  arrayBuffer(): Promise<ArrayBuffer>;
}

export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<HttpResponse>;

/** Releases a response we do not read, so its connection goes back to the pool. */
export async function discard(response: HttpResponse): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // Already closed.
  }
}
