// An HTTP proxy put in front of a registry to inject faults. It forwards the client's Host header
// unchanged: registries build upload Location URLs from Host, so the client keeps talking to the
// proxy for the whole upload. Bodies stream both ways; nothing is buffered.
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import { closeServer, listenOnLoopback } from './ports.ts';

export type Fault =
  /** Answer with this status instead of forwarding (e.g. 429 with Retry-After, 503). */
  | { kind: 'status'; status: number; retryAfterSeconds?: number; body?: string }
  /** Forward, then close the connection after `afterBytes` bytes of the response body. */
  | { kind: 'drop'; afterBytes: number }
  /** Close the connection without answering. */
  | { kind: 'hangup' }
  /** Wait, then go on (forward, or let another matching rule fire). */
  | { kind: 'delay'; ms: number };

export interface FaultRule {
  /** Any method when omitted. */
  method?: string;
  /** Tested against the request target, path and query, e.g. /\/blobs\/sha256:/ (no g flag: test() would keep state). */
  path: RegExp;
  /** Only requests whose Content-Length is at least this (e.g. 1: uploads with a body). */
  minBodyBytes?: number;
  /** Fires for the next `times` matching requests (default 1; Infinity for all). */
  times?: number;
  fault: Fault;
}

export interface ActiveRule {
  readonly rule: FaultRule;
  /** How often it fired so far. */
  fired: number;
  remaining: number;
  remove(): void;
}

export interface ProxiedRequest {
  method: string;
  url: string;
  /** The terminal fault applied, if any ('delay' only when a delay was all that happened). */
  fault?: Fault['kind'];
  /** Status sent to the client (undefined for hangups). */
  status?: number;
  /** When the request arrived (performance.now() of this process). */
  receivedAt: number;
}

export interface FaultProxy {
  /** '127.0.0.1:PORT': use it where the registry's host would go. */
  host: string;
  url: string;
  upstream: string;
  addRule(rule: FaultRule): ActiveRule;
  clearRules(): void;
  /** Every request received, in order. */
  requests: ProxiedRequest[];
  stats: { received: number; forwarded: number; faulted: number; delayed: number };
  stop(): Promise<void>;
}

// Per-connection headers are not forwarded; Node frames each side itself.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function endToEnd(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name)));
}

/** `upstream`: 'http://host:port' or 'host:port' of the registry. */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream.includes('://') ? upstream : `http://${upstream}`);
  const agent = new Agent({ keepAlive: true });
  const rules: ActiveRule[] = [];

  const proxy: FaultProxy = {
    host: '',
    url: '',
    upstream: target.origin,
    requests: [],
    stats: { received: 0, forwarded: 0, faulted: 0, delayed: 0 },
    addRule(rule) {
      const active: ActiveRule = {
        rule,
        fired: 0,
        remaining: rule.times ?? 1,
        remove() {
          const i = rules.indexOf(active);
          if (i >= 0) rules.splice(i, 1);
        },
      };
      rules.push(active);
      return active;
    },
    clearRules() {
      rules.length = 0;
    },
    async stop() {
      await closeServer(server);
      agent.destroy();
    },
  };

  /** Consumes the matching delay rules and the first matching other rule. */
  function pick(req: IncomingMessage): { delayMs: number; fault?: Fault } {
    let delayMs = 0;
    let fault: Fault | undefined;
    for (const active of rules) {
      const { method, path, fault: candidate } = active.rule;
      if (active.remaining <= 0 || (method && method !== req.method) || !path.test(req.url ?? '')) continue;
      if (active.rule.minBodyBytes !== undefined && Number(req.headers['content-length'] ?? 0) < active.rule.minBodyBytes)
        continue;
      if (candidate.kind !== 'delay' && fault) continue; // one terminal fault per request
      active.remaining--;
      active.fired++;
      if (candidate.kind === 'delay') delayMs += candidate.ms;
      else fault = candidate;
    }
    return { delayMs, fault };
  }

  const server = createServer((req, res) => {
    const record: ProxiedRequest = { method: req.method ?? '', url: req.url ?? '', receivedAt: performance.now() };
    proxy.requests.push(record);
    proxy.stats.received++;
    res.on('finish', () => (record.status = res.statusCode));
    const { delayMs, fault } = pick(req);
    if (delayMs > 0) {
      proxy.stats.delayed++;
      record.fault = 'delay';
    }
    if (fault) {
      proxy.stats.faulted++;
      record.fault = fault.kind;
    }
    setTimeout(() => serve(req, res, fault), delayMs);
  });

  function serve(req: IncomingMessage, res: ServerResponse, fault: Fault | undefined): void {
    if (fault?.kind === 'hangup') {
      req.socket.destroy();
      return;
    }
    if (fault?.kind === 'status') {
      // Read (and discard) the request body first, so the client sees an ordinary answer
      // rather than a connection error while it is still sending.
      req.resume();
      req.once('end', () => {
        const code = fault.status === 429 ? 'TOOMANYREQUESTS' : fault.status === 503 ? 'UNAVAILABLE' : 'UNKNOWN';
        const body = fault.body ?? JSON.stringify({ errors: [{ code, message: `injected ${fault.status}`, detail: null }] });
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (fault.retryAfterSeconds !== undefined) headers['retry-after'] = String(fault.retryAfterSeconds);
        res.writeHead(fault.status, headers).end(body);
      });
      return;
    }
    proxy.stats.forwarded++;
    const upstreamReq = httpRequest({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: endToEnd(req.headers), // keeps the client's Host
      agent,
    });
    upstreamReq.on('error', (error) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`fault proxy: ${error.message}`);
      else res.destroy();
    });
    req.on('error', () => upstreamReq.destroy());
    req.pipe(upstreamReq);
    upstreamReq.on('response', (upstreamRes) => {
      res.writeHead(upstreamRes.statusCode ?? 502, endToEnd(upstreamRes.headers));
      if (fault?.kind === 'drop') cutAfter(upstreamRes, res, fault.afterBytes);
      else upstreamRes.pipe(res);
    });
  }

  proxy.host = `127.0.0.1:${await listenOnLoopback(server)}`;
  proxy.url = `http://${proxy.host}`;
  return proxy;
}

/** Streams the body until `limit` bytes went out, then closes the connection mid-body. */
function cutAfter(source: IncomingMessage, res: ServerResponse, limit: number): void {
  let sent = 0;
  const cut = (last: Uint8Array): void => {
    source.destroy();
    // Headers must reach the client before the close, even when no body byte does.
    res.flushHeaders();
    if (last.length > 0) res.write(last);
    // end() flushes what was written, then closes: the client sees a body shorter than announced.
    res.socket?.end();
  };
  if (limit <= 0) {
    cut(new Uint8Array(0));
    return;
  }
  source.on('data', (chunk: Buffer) => {
    if (sent + chunk.length < limit) {
      sent += chunk.length;
      if (!res.write(chunk)) {
        source.pause();
        res.once('drain', () => source.resume());
      }
      return;
    }
    const last = chunk.subarray(0, limit - sent);
    sent = limit;
    cut(last);
  });
  source.on('end', () => res.end());
}
