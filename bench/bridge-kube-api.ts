// The benchmark's own line to the API server: raw HTTPS with the admin token over one undici pool,
// so loading tens of thousands of workloads, changing them and watching them costs the benchmark little and
// does not go through the client library whose behaviour the bridge is measured with.

import { Agent, request } from 'undici';

export interface WatchEvent {
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  readonly object: Record<string, unknown>;
}

export interface Watching {
  stop(): void;
}

export class KubeApi {
  readonly #server: string;
  readonly #token: string;
  readonly #agent: Agent;

  constructor(options: { server: string; ca: string | Buffer; token: string; connections?: number }) {
    this.#server = options.server;
    this.#token = options.token;
    this.#agent = new Agent({ connections: options.connections ?? 64, connect: { ca: options.ca }, keepAliveTimeout: 60_000 });
  }

  /** One call; throws on a non-2xx answer (with the Status message). Returns the parsed body. */
  async call<T = Record<string, unknown>>(
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
    path: string,
    body?: unknown,
    contentType?: string,
  ) {
    const response = await request(`${this.#server}${path}`, {
      method,
      dispatcher: this.#agent,
      headers: {
        authorization: `Bearer ${this.#token}`,
        accept: 'application/json',
        ...(body !== undefined && { 'content-type': contentType ?? 'application/json' }),
      },
      ...(body !== undefined && { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await response.body.text();
    if (response.statusCode < 200 || response.statusCode > 299) {
      let message = text.slice(0, 300);
      try {
        message = String((JSON.parse(text) as { message?: unknown }).message ?? message);
      } catch {
        // not a Status: keep the text
      }
      throw Object.assign(new Error(`${method} ${path}: HTTP ${response.statusCode}: ${message}`), {
        statusCode: response.statusCode,
      });
    }
    return JSON.parse(text) as T;
  }

  async createNamespace(name: string): Promise<void> {
    try {
      await this.call('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode !== 409) throw error;
    }
  }

  /**
   * The current resourceVersion of a collection (`/apis/apps/v1/deployments`, `/api/v1/pods`, or
   * one namespace's): a watch from here sees what comes next.
   */
  async resourceVersion(collection: string): Promise<string> {
    const list = await this.call<{ metadata: { resourceVersion: string } }>('GET', `${collection}?limit=1`);
    return list.metadata.resourceVersion;
  }

  /** Every object of a collection, in pages (what a careful client does with a large collection). */
  async list(collection: string): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let next: string | undefined;
    do {
      const page = await this.call<{ items: Record<string, unknown>[]; metadata: { continue?: string } }>(
        'GET',
        `${collection}?limit=500${next ? `&continue=${encodeURIComponent(next)}` : ''}`,
      );
      items.push(...page.items);
      next = page.metadata.continue || undefined;
    } while (next !== undefined);
    return items;
  }

  /**
   * Watches a collection from `resourceVersion`, calling `onEvent` per event; a watch the server
   * ends is resumed from the last version seen. Errors that cannot be resumed (410 Gone) go to
   * `onError`.
   */
  watch(
    collection: string,
    resourceVersion: string,
    onEvent: (event: WatchEvent) => void,
    onError: (error: Error) => void,
  ): Watching {
    let version = resourceVersion;
    let stopped = false;
    const abort = new AbortController();
    const run = async () => {
      while (!stopped) {
        const response = await request(
          `${this.#server}${collection}?watch=true&allowWatchBookmarks=true&resourceVersion=${version}`,
          {
            dispatcher: this.#agent,
            headers: { authorization: `Bearer ${this.#token}`, accept: 'application/json' },
            signal: abort.signal,
            bodyTimeout: 0,
          },
        );
        if (response.statusCode !== 200) throw new Error(`watch: HTTP ${response.statusCode}: ${await response.body.text()}`);
        let buffered = '';
        for await (const chunk of response.body) {
          buffered += (chunk as Buffer).toString('utf8');
          let newline: number;
          while ((newline = buffered.indexOf('\n')) !== -1) {
            const line = buffered.slice(0, newline);
            buffered = buffered.slice(newline + 1);
            if (line.trim() === '') continue;
            const event = JSON.parse(line) as WatchEvent;
            if (event.type === 'ERROR') throw new Error(`watch: ${JSON.stringify(event.object).slice(0, 300)}`);
            const metadata = event.object.metadata as { resourceVersion?: string } | undefined;
            if (metadata?.resourceVersion) version = metadata.resourceVersion;
            onEvent(event);
          }
        }
      }
    };
    run().catch((error: unknown) => {
      if (!stopped) onError(error as Error);
    });
    return {
      stop: () => {
        stopped = true;
        abort.abort();
      },
    };
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }
}
