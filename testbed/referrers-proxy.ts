// A registry with the OCI 1.1 referrers API, for tests. No registry that runs here has the API
// (distribution 2.8 does not; zot and olareg are not available), so this puts it in front of a real
// distribution registry, the way the spec describes it:
//
// - GET /v2/<name>/referrers/<digest> answers an OCI image index of the manifests pushed (through
//   this proxy) to <name> with that subject, each descriptor with its artifactType and
//   annotations; an empty index when there are none. Authorization is the registry's: the proxy
//   asks it about the subject with the client's own Authorization header and relays a refusal
//   (401 with its WWW-Authenticate challenge) as it is.
// - A manifest PUT with a `subject` is answered with the `OCI-Subject` header, as registries that
//   index referrers do, so a client knows not to maintain the tag-scheme index.
// - Everything else passes through unchanged.

import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { closeServer, listenOnLoopback } from './ports.ts';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface ReferrersProxy {
  host: string;
  url: string;
  /** Referrers recorded per `<name>@<subject digest>`. */
  readonly referrers: Map<string, ReferrerDescriptor[]>;
  stop(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization']);

function endToEnd(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name.toLowerCase())));
}

async function readBody(stream: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export async function startReferrersProxy(upstream: string): Promise<ReferrersProxy> {
  const target = new URL(upstream);
  const agent = new Agent({ keepAlive: true });
  const referrers = new Map<string, ReferrerDescriptor[]>();

  const forward = (req: IncomingMessage, options: { method?: string; path?: string; body?: Buffer }) =>
    new Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const upstreamReq = httpRequest(
        {
          host: target.hostname,
          port: target.port,
          method: options.method ?? req.method,
          path: options.path ?? req.url,
          headers: endToEnd(req.headers), // keeps the client's Host, so Locations point here
          agent,
        },
        (res) => {
          readBody(res).then((body) => resolve({ status: res.statusCode ?? 502, headers: res.headers, body }), reject);
        },
      );
      upstreamReq.on('error', reject);
      upstreamReq.end(options.body);
    });

  const server = createServer((req, res) => {
    const url = req.url ?? '';
    const listing = /^\/v2\/(.+)\/referrers\/(sha256:[a-f0-9]{64})(?:\?.*)?$/.exec(url);
    const manifestPut = req.method === 'PUT' ? /^\/v2\/(.+)\/manifests\/[^/?]+$/.exec(url) : null;

    if (req.method === 'GET' && listing) {
      const [, name, subject] = listing as unknown as [string, string, string];
      // The registry decides who may read <name>: ask it about the subject as the client.
      forward(req, { method: 'HEAD', path: `/v2/${name}/manifests/${subject}` }).then(
        (check) => {
          if (check.status === 401 || check.status === 403) {
            const challenge = check.headers['www-authenticate'];
            res
              .writeHead(check.status, {
                'content-type': 'application/json',
                ...(challenge !== undefined && { 'www-authenticate': challenge }),
              })
              .end(
                JSON.stringify({
                  errors: [
                    { code: check.status === 401 ? 'UNAUTHORIZED' : 'DENIED', message: 'access to the repository refused' },
                  ],
                }),
              );
            return;
          }
          const manifests = referrers.get(`${name}@${subject}`) ?? [];
          res
            .writeHead(200, { 'content-type': OCI_INDEX })
            .end(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
        },
        (error: Error) => res.writeHead(502).end(error.message),
      );
      return;
    }

    if (manifestPut) {
      const name = manifestPut[1]!;
      readBody(req)
        .then(async (body) => {
          const answer = await forward(req, { body });
          const headers = endToEnd(answer.headers);
          if (answer.status === 201) {
            const manifest = JSON.parse(body.toString('utf8')) as {
              mediaType?: string;
              artifactType?: string;
              config?: { mediaType?: string };
              annotations?: Record<string, string>;
              subject?: { digest?: string };
            };
            const subject = manifest.subject?.digest;
            const digest = answer.headers['docker-content-digest'];
            if (subject !== undefined && typeof digest === 'string') {
              const key = `${name}@${subject}`;
              const listed = (referrers.get(key) ?? []).filter((descriptor) => descriptor.digest !== digest);
              listed.push({
                mediaType: manifest.mediaType ?? String(req.headers['content-type']),
                digest,
                size: body.length,
                ...((manifest.artifactType ?? manifest.config?.mediaType) !== undefined && {
                  artifactType: manifest.artifactType ?? manifest.config?.mediaType,
                }),
                ...(manifest.annotations !== undefined && { annotations: manifest.annotations }),
              });
              referrers.set(key, listed);
              headers['oci-subject'] = subject;
            }
          }
          res.writeHead(answer.status, headers).end(answer.body);
        })
        .catch((error: Error) => {
          if (!res.headersSent) res.writeHead(502).end(error.message);
        });
      return;
    }

    const upstreamReq = httpRequest({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: url,
      headers: endToEnd(req.headers),
      agent,
    });
    upstreamReq.on('error', (error) => {
      if (!res.headersSent) res.writeHead(502).end(error.message);
      else res.destroy();
    });
    req.pipe(upstreamReq);
    upstreamReq.on('response', (upstreamRes) => {
      res.writeHead(upstreamRes.statusCode ?? 502, endToEnd(upstreamRes.headers));
      upstreamRes.pipe(res);
    });
  });

  const host = `127.0.0.1:${await listenOnLoopback(server)}`;
  return {
    host,
    url: `http://${host}`,
    referrers,
    async stop() {
      await closeServer(server);
      agent.destroy();
    },
  };
}
