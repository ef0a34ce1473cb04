// A local stand-in for AWS ECR, for tests on a machine that cannot reach AWS. Three servers:
//
//  - the API endpoint (AWS_ENDPOINT_URL_ECR): ECR's AWS JSON 1.1 protocol as @aws-sdk/client-ecr
//    speaks it (POST /, X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Operation>), every
//    request's SigV4 signature recomputed and checked as AWS does;
//  - the registry (registryHost): the real CNCF registry (startRegistry, htpasswd) behind a
//    small streaming front that adds what ECR does differently from a plain registry: Basic
//    auth with GetAuthorizationToken passwords that expire, no push into a repository that
//    CreateRepository did not create, immutable tags, blob GETs redirected to "S3", PATCH
//    answered 201 and later PATCH bodies dropped (aws/containers-roadmap#2831), mount ignored
//    unless enabled;
//  - the "S3" origin, on another loopback address (127.0.0.2) so that it is another host for
//    every client, serving blob bytes behind presigned-looking URLs and refusing, as S3 does, a
//    request that carries an Authorization header besides the query signature.
//
// The registry itself only ever sees the front's own credentials (user AWS): the front checks
// the tokens it issued, which lets them expire or be revoked without touching the registry's
// htpasswd file (and sidesteps bcrypt's 72-byte limit: ECR passwords are ~2 KB).
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse,
} from 'node:http';
import { pipeline } from 'node:stream/promises';
import { closeServer, listenOnLoopback } from './ports.ts';
import { startRegistry, type Registry } from './registry.ts';

export type TagMutability = 'MUTABLE' | 'IMMUTABLE' | 'MUTABLE_WITH_EXCLUSION' | 'IMMUTABLE_WITH_EXCLUSION';
export type EncryptionType = 'AES256' | 'KMS' | 'KMS_DSSE';

export interface TagMutabilityExclusionFilter {
  filterType: 'WILDCARD';
  /** A tag pattern where `*` matches any run of characters. */
  filter: string;
}

export interface EncryptionConfiguration {
  encryptionType: EncryptionType;
  kmsKey?: string;
}

/** Deny-only stand-in for a repository policy: ECR IAM action names, e.g. 'ecr:PutImage'. */
export interface RepositoryPolicy {
  deny: string[];
}

/** What the fixture knows of one repository; live objects, so tests can inspect them. */
export interface EcrRepository {
  name: string;
  arn: string;
  /** registryHost/name: what the engine pushes to. */
  uri: string;
  createdAt: Date;
  tagMutability: TagMutability;
  tagMutabilityExclusionFilters: TagMutabilityExclusionFilter[];
  scanOnPush: boolean;
  encryption: EncryptionConfiguration;
  tags: Array<{ Key: string; Value: string }>;
  /** Successful creations (CreateRepository or the fixture's createRepository). */
  createdCount: number;
  /** CreateRepository calls naming this repository, the refused repeats included. */
  createCalls: number;
  policy?: RepositoryPolicy;
}

export interface CreateRepositoryOptions {
  tagMutability?: TagMutability;
  tagMutabilityExclusionFilters?: TagMutabilityExclusionFilter[];
  scanOnPush?: boolean;
  encryption?: EncryptionConfiguration;
}

/** One call to the API endpoint, in arrival order. */
export interface EcrApiCall {
  /** The X-Amz-Target header as sent. */
  target: string;
  /** The operation name ('CreateRepository'), or '' when the target is not ECR's. */
  operation: string;
  ok: boolean;
  status: number;
  /** `__type` of the error answered. */
  error?: string;
  message?: string;
  /** The access key id the request was signed with, when it could be read. */
  accessKeyId?: string;
  /** The parsed JSON body. */
  input?: unknown;
}

/** One request the registry front answered. */
export interface EcrRegistryRequest {
  method: string;
  /** Path and query as received. */
  url: string;
  status: number;
  repository?: string;
  /** The ECR IAM action the request maps to, e.g. 'ecr:PutImage'. */
  action?: string;
}

/** One request the S3 origin received, with every header it carried. */
export interface S3Request {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  status: number;
}

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  /** Temporary credentials: requests must carry it in X-Amz-Security-Token. */
  sessionToken?: string;
}

export interface IssuedToken {
  username: 'AWS';
  password: string;
  expiresAt: Date;
  revoked: boolean;
}

export interface EcrBehaviour {
  /**
   * 'ecr' (default): a PATCH is answered 201, and every PATCH after the first of an upload
   * session is accepted but its body dropped, as aws/containers-roadmap#2831 describes; the
   * final PUT then fails digest verification. 'spec': PATCH passes through (202).
   */
  chunkedUploads: 'ecr' | 'spec';
  /**
   * ECR's opt-in BLOB_MOUNTING account setting. false (default): `mount`/`from` are ignored and
   * the POST starts an ordinary upload (202). true: passed to the registry (201 when mounted).
   */
  blobMounting: boolean;
}

export interface StartEcrOptions {
  /** Default '123456789012'. */
  accountId?: string;
  /** Default 'us-east-1'. */
  region?: string;
  /** Default: generated long-term credentials (AKIA…). */
  credentials?: AwsCredentials;
  /** Validity of GetAuthorizationToken passwords. Default 43200 (12 h, as ECR). */
  tokenLifetimeSeconds?: number;
  /** Validity of the S3 URLs blob GETs redirect to. Default 600. */
  presignedUrlLifetimeSeconds?: number;
  /** Loopback address the S3 origin listens on; must differ from 127.0.0.1. Default '127.0.0.2'. */
  s3Host?: string;
  behaviour?: Partial<EcrBehaviour>;
}

export interface Ecr {
  /** http://127.0.0.1:PORT, for AWS_ENDPOINT_URL_ECR (or the client's `endpoint`). */
  endpoint: string;
  /** '127.0.0.1:PORT': the registry, as image references name it. */
  registryHost: string;
  /** 'http://127.0.0.1:PORT' (= proxyEndpoint of GetAuthorizationToken). */
  registryUrl: string;
  /** 'http://127.0.0.2:PORT': where blob GETs are redirected. */
  s3Origin: string;
  accountId: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The variables the AWS SDK (and a process running it) needs to reach this fixture. */
  env: Record<string, string>;
  repositories: Map<string, EcrRepository>;
  /** API calls, in arrival order. */
  requests: EcrApiCall[];
  registryRequests: EcrRegistryRequest[];
  s3Requests: S3Request[];
  /** Every password issued so far. */
  tokens: IssuedToken[];
  /** Switches that may be changed while running. */
  behaviour: EcrBehaviour;
  /** The registry behind the front (storage, logs); it accepts only the front's credentials. */
  registry: Registry;
  /** Creates a repository as CreateRepository would, without going through the API. */
  createRepository(name: string, options?: CreateRepositoryOptions): EcrRepository;
  /** Sets (or, with undefined, removes) a repository's deny list. */
  setRepositoryPolicy(name: string, policy: RepositoryPolicy | undefined): void;
  /** Issues a registry password as GetAuthorizationToken does. */
  issueToken(): IssuedToken;
  /** Every password issued so far expires now (the registry answers 403 DENIED). */
  expireTokens(): void;
  /** Every password issued so far stops working (401): a rotation. */
  revokeTokens(): void;
  /** Accepts one more access key (for example session credentials). */
  addCredentials(credentials: AwsCredentials): void;
  /**
   * The next `times` calls of `operation` (after authentication) fail with this error, e.g.
   * { type: 'ThrottlingException', message: 'Rate exceeded' }. Default status 400.
   */
  failNext(operation: string, error: { type: string; message?: string; status?: number }, times?: number): void;
  stop(): Promise<void>;
}

const TARGET_PREFIX = 'AmazonEC2ContainerRegistry_V20150921.';
const JSON_CONTENT_TYPE = 'application/x-amz-json-1.1';
const REPOSITORY_NAME_PATTERN = '(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*';
const REPOSITORY_NAME = new RegExp(`^${REPOSITORY_NAME_PATTERN}$`);
const TAG_MUTABILITIES: TagMutability[] = ['MUTABLE', 'IMMUTABLE', 'IMMUTABLE_WITH_EXCLUSION', 'MUTABLE_WITH_EXCLUSION'];
const ENCRYPTION_TYPES: EncryptionType[] = ['AES256', 'KMS', 'KMS_DSSE'];
const MAX_API_BODY = 1024 * 1024;
/** AWS refuses signatures dated more than 15 minutes from its clock. */
const MAX_SKEW_MS = 15 * 60 * 1000;
const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);
/** /v2/<name>/<what>: the name is the shortest prefix that leaves a valid tail. */
const REPOSITORY_PATH =
  /^\/v2\/(.+?)\/(manifests\/([^/]+)|blobs\/uploads\/([^/]*)|blobs\/([^/]+)|tags\/list|referrers\/([^/]+))$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/** An error the API answers as {"__type": type, "message": message} with HTTP `status`. */
export class AwsApiError extends Error {
  readonly type: string;
  readonly status: number;
  constructor(type: string, message: string, status = 400) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

export async function startEcr(options: StartEcrOptions = {}): Promise<Ecr> {
  const accountId = options.accountId ?? '123456789012';
  const region = options.region ?? 'us-east-1';
  const main = options.credentials ?? generatedCredentials();
  const tokenLifetimeMs = (options.tokenLifetimeSeconds ?? 43_200) * 1000;
  const presignLifetimeSeconds = options.presignedUrlLifetimeSeconds ?? 600;
  const s3Host = options.s3Host ?? '127.0.0.2';
  const behaviour: EcrBehaviour = {
    chunkedUploads: options.behaviour?.chunkedUploads ?? 'ecr',
    blobMounting: options.behaviour?.blobMounting ?? false,
  };

  const credentials = new Map<string, AwsCredentials>([[main.accessKeyId, main]]);
  const repositories = new Map<string, EcrRepository>();
  const requests: EcrApiCall[] = [];
  const registryRequests: EcrRegistryRequest[] = [];
  const s3Requests: S3Request[] = [];
  const tokens: IssuedToken[] = [];
  const injected = new Map<string, Array<{ type: string; message: string; status: number }>>();

  // The registry behind the front; only the front knows its password.
  const internalPassword = randomBytes(24).toString('hex');
  const internalAuthorization = `Basic ${Buffer.from(`AWS:${internalPassword}`).toString('base64')}`;
  const registry = await startRegistry({ auth: 'htpasswd', credentials: { username: 'AWS', password: internalPassword } });
  const registryPort = Number(new URL(registry.url).port);
  const agent = new Agent({ keepAlive: true });

  const servers: Server[] = [];
  const api = await listen(createServer(), '127.0.0.1', servers);
  const front = await listen(createServer(), '127.0.0.1', servers);
  const s3 = await listen(createServer(), s3Host, servers).catch(async (error: unknown) => {
    await Promise.all(servers.map(closeServer));
    await registry.stop();
    throw new Error(`the S3 origin cannot listen on ${s3Host} (any 127.x address works on Linux): ${String(error)}`);
  });

  const endpoint = `http://127.0.0.1:${api.port}`;
  const registryHost = `127.0.0.1:${front.port}`;
  const registryUrl = `http://${registryHost}`;
  const s3Origin = `http://${s3Host}:${s3.port}`;
  const bucket = `prod-${region}-starport-layer-bucket`;
  const s3Secret = randomBytes(32);
  const s3Objects = new Map<string, { repository: string; digest: string }>();

  const arnOf = (name: string): string => `arn:aws:ecr:${region}:${accountId}:repository/${name}`;

  function createRepository(name: string, create: CreateRepositoryOptions = {}): EcrRepository {
    const existing = repositories.get(name);
    if (existing) {
      throw new AwsApiError(
        'RepositoryAlreadyExistsException',
        `The repository with name '${name}' already exists in the registry with id '${accountId}'`,
      );
    }
    const repository: EcrRepository = {
      name,
      arn: arnOf(name),
      uri: `${registryHost}/${name}`,
      createdAt: new Date(),
      tagMutability: create.tagMutability ?? 'MUTABLE',
      tagMutabilityExclusionFilters: create.tagMutabilityExclusionFilters ?? [],
      scanOnPush: create.scanOnPush ?? false,
      encryption: create.encryption ?? { encryptionType: 'AES256' },
      tags: [],
      createdCount: 1,
      createCalls: 0,
    };
    repositories.set(name, repository);
    return repository;
  }

  function issueToken(): IssuedToken {
    const expiresAt = new Date(Date.now() + tokenLifetimeMs);
    // Shaped like ECR's: base64 of a JSON envelope around an encrypted payload, ~2 KB.
    const envelope = {
      payload: randomBytes(1024).toString('base64'),
      datakey: randomBytes(256).toString('base64'),
      version: '2',
      type: 'DATA_KEY',
      expiration: Math.floor(expiresAt.getTime() / 1000),
    };
    const token: IssuedToken = {
      username: 'AWS',
      password: Buffer.from(JSON.stringify(envelope)).toString('base64'),
      expiresAt,
      revoked: false,
    };
    tokens.push(token);
    return token;
  }

  // ------------------------------------------------------------------------------------------
  // API endpoint

  function repositoryJson(repository: EcrRepository): Record<string, unknown> {
    return {
      repositoryArn: repository.arn,
      registryId: accountId,
      repositoryName: repository.name,
      repositoryUri: repository.uri,
      // awsJson timestamps: epoch seconds, fractions allowed.
      createdAt: repository.createdAt.getTime() / 1000,
      imageTagMutability: repository.tagMutability,
      ...(repository.tagMutabilityExclusionFilters.length > 0
        ? { imageTagMutabilityExclusionFilters: repository.tagMutabilityExclusionFilters }
        : {}),
      imageScanningConfiguration: { scanOnPush: repository.scanOnPush },
      encryptionConfiguration: repository.encryption,
    };
  }

  const operations: Record<string, (input: Record<string, unknown>) => unknown> = {
    GetAuthorizationToken() {
      const token = issueToken();
      return {
        authorizationData: [
          {
            authorizationToken: Buffer.from(`AWS:${token.password}`).toString('base64'),
            expiresAt: token.expiresAt.getTime() / 1000,
            proxyEndpoint: registryUrl,
          },
        ],
      };
    },

    CreateRepository(input) {
      const name = validRepositoryName(input.repositoryName);
      const counted = repositories.get(name);
      if (counted) counted.createCalls++;
      const tagMutability = input.imageTagMutability ?? 'MUTABLE';
      if (typeof tagMutability !== 'string' || !TAG_MUTABILITIES.includes(tagMutability as TagMutability)) {
        throw invalidParameter('imageTagMutability', `must satisfy enum value set: [${TAG_MUTABILITIES.join(', ')}]`);
      }
      const filters = parseExclusionFilters(input.imageTagMutabilityExclusionFilters);
      if (tagMutability.endsWith('_WITH_EXCLUSION') !== filters.length > 0) {
        throw new AwsApiError(
          'InvalidParameterException',
          `imageTagMutabilityExclusionFilters must be given exactly when imageTagMutability is *_WITH_EXCLUSION`,
        );
      }
      const scanning = input.imageScanningConfiguration as { scanOnPush?: unknown } | undefined;
      const encryption = parseEncryption(input.encryptionConfiguration);
      const repository = createRepository(name, {
        tagMutability: tagMutability as TagMutability,
        tagMutabilityExclusionFilters: filters,
        scanOnPush: scanning?.scanOnPush === true,
        encryption,
      });
      repository.createCalls = 1;
      if (Array.isArray(input.tags)) repository.tags = input.tags as EcrRepository['tags'];
      return { repository: repositoryJson(repository) };
    },

    DescribeRepositories(input) {
      const names = input.repositoryNames;
      if (names !== undefined) {
        if (!Array.isArray(names) || names.length === 0) {
          throw invalidParameter('repositoryNames', 'must have length greater than or equal to 1');
        }
        if (input.maxResults !== undefined || input.nextToken !== undefined) {
          throw new AwsApiError('InvalidParameterException', 'maxResults and nextToken cannot be used with repositoryNames');
        }
        return {
          repositories: names.map((raw) => {
            const name = validRepositoryName(raw);
            const repository = repositories.get(name);
            if (!repository) throw repositoryNotFound(name);
            denyIfPolicySays(repository, 'ecr:DescribeRepositories');
            return repositoryJson(repository);
          }),
        };
      }
      const all = [...repositories.values()];
      const start = typeof input.nextToken === 'string' ? Number(Buffer.from(input.nextToken, 'base64').toString()) : 0;
      if (!Number.isInteger(start) || start < 0 || start > all.length) {
        throw new AwsApiError('InvalidParameterException', "Invalid parameter at 'nextToken'");
      }
      const max = typeof input.maxResults === 'number' ? input.maxResults : 1000;
      if (!Number.isInteger(max) || max < 1 || max > 1000) {
        throw invalidParameter('maxResults', 'must have value between 1 and 1000');
      }
      const page = all.slice(start, start + max);
      const next = start + page.length;
      return {
        repositories: page.map(repositoryJson),
        ...(next < all.length ? { nextToken: Buffer.from(String(next)).toString('base64') } : {}),
      };
    },
  };

  function validRepositoryName(value: unknown): string {
    if (value === undefined || value === null) throw invalidParameter('repositoryName', 'must not be null');
    if (typeof value !== 'string') throw new AwsApiError('SerializationException', 'repositoryName must be a string');
    if (value.length < 2) throw invalidParameter('repositoryName', 'must have length greater than or equal to 2');
    if (value.length > 256) throw invalidParameter('repositoryName', 'must have length less than or equal to 256');
    if (!REPOSITORY_NAME.test(value)) {
      throw invalidParameter('repositoryName', `must satisfy regular expression '${REPOSITORY_NAME_PATTERN}'`);
    }
    return value;
  }

  function repositoryNotFound(name: string): AwsApiError {
    return new AwsApiError(
      'RepositoryNotFoundException',
      `The repository with name '${name}' does not exist in the registry with id '${accountId}'`,
    );
  }

  function denyIfPolicySays(repository: EcrRepository, action: string): void {
    if (repository.policy?.deny.includes(action)) {
      throw new AwsApiError('AccessDeniedException', deniedMessage(action, repository.arn));
    }
  }

  function deniedMessage(action: string, resource: string): string {
    return (
      `User: arn:aws:iam::${accountId}:user/ecr-fixture is not authorized to perform: ${action} ` +
      `on resource: ${resource} with an explicit deny in a resource-based policy`
    );
  }

  api.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    void handleApi(req, res).catch((error: unknown) => {
      if (!res.headersSent) sendApiError(res, new AwsApiError('InternalFailure', String(error), 500));
      else res.destroy();
    });
  });

  async function handleApi(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const target = header(req.headers, 'x-amz-target') ?? '';
    const operation = target.startsWith(TARGET_PREFIX) ? target.slice(TARGET_PREFIX.length) : '';
    const call: EcrApiCall = { target, operation, ok: false, status: 0 };
    requests.push(call);
    const answer = (status: number, body: unknown): void => {
      call.status = status;
      call.ok = status === 200;
      res.writeHead(status, { 'content-type': JSON_CONTENT_TYPE, 'x-amzn-requestid': randomUUID() });
      res.end(JSON.stringify(body));
    };
    try {
      const body = await readBody(req, MAX_API_BODY);
      const signer = verifySigV4(req, body, credentials, region, 'ecr', Date.now());
      call.accessKeyId = signer.accessKeyId;
      if (req.method !== 'POST') throw new AwsApiError('UnknownOperationException', `${req.method} is not supported`);
      let input: Record<string, unknown>;
      try {
        const parsed: unknown = body.length === 0 ? {} : JSON.parse(body.toString('utf8'));
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
        input = parsed as Record<string, unknown>;
      } catch {
        throw new AwsApiError('SerializationException', 'Start of structure or map found where not expected.');
      }
      call.input = input;
      const handler = operation ? operations[operation] : undefined;
      if (!handler) throw new AwsApiError('UnknownOperationException', `Unknown operation ${target || '(no X-Amz-Target)'}`);
      const queued = injected.get(operation);
      const failure = queued?.shift();
      if (failure) throw new AwsApiError(failure.type, failure.message, failure.status);
      answer(200, handler(input));
    } catch (error) {
      if (!(error instanceof AwsApiError)) throw error;
      call.error = error.type;
      call.message = error.message;
      answer(error.status, { __type: error.type, message: error.message });
    }
  }

  // ------------------------------------------------------------------------------------------
  // Registry front

  const uploads = new Map<string, { patches: number; location?: string; range?: string }>();
  const tagLocks = new Map<string, Promise<void>>();

  front.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const entry: EcrRegistryRequest = { method: req.method ?? '', url: req.url ?? '', status: 0 };
    registryRequests.push(entry);
    res.once('close', () => (entry.status = res.statusCode));
    void handleRegistry(req, res, entry).catch(() => {
      if (!res.headersSent) sendRegistryError(res, 500, 'UNKNOWN', 'internal error in the ECR fixture');
      else res.destroy();
    });
  });

  async function handleRegistry(req: IncomingMessage, res: ServerResponse, entry: EcrRegistryRequest): Promise<void> {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', registryUrl);

    const denial = checkRegistryAuthorization(header(req.headers, 'authorization'));
    if (denial === 'expired') {
      return drainThen(req, () =>
        sendRegistryError(res, 403, 'DENIED', 'Your authorization token has expired. Reauthenticate and try again.'),
      );
    }
    if (denial !== undefined) {
      return drainThen(req, () =>
        sendRegistryError(res, 401, 'UNAUTHORIZED', 'Not Authorized', {
          'www-authenticate': `Basic realm="${registryUrl}/",service="ecr.amazonaws.com"`,
        }),
      );
    }

    const match = REPOSITORY_PATH.exec(url.pathname);
    if (!match) return forward(req, res, url);
    const name = match[1]!;
    const [, , tail, reference, uploadId, blobDigest] = match;
    entry.repository = name;
    const action = ecrAction(method, tail!, uploadId);
    entry.action = action;
    const repository = repositories.get(name);
    if (!repository) {
      return drainThen(req, () =>
        sendRegistryError(
          res,
          404,
          'NAME_UNKNOWN',
          `The repository with name '${name}' does not exist in the registry with id '${accountId}'`,
        ),
      );
    }
    if (action && repository.policy?.deny.includes(action)) {
      return drainThen(req, () => sendRegistryError(res, 403, 'DENIED', deniedMessage(action, repository.arn)));
    }

    if (method === 'POST' && uploadId === '' && !behaviour.blobMounting) {
      url.searchParams.delete('mount');
      url.searchParams.delete('from');
      return forward(req, res, url);
    }
    if (method === 'PATCH' && uploadId && behaviour.chunkedUploads === 'ecr') return patchLikeEcr(req, res, url, uploadId);
    if ((method === 'PUT' || method === 'DELETE') && uploadId) uploads.delete(uploadId);
    if (method === 'PUT' && reference !== undefined && !DIGEST.test(reference) && isImmutable(repository, reference)) {
      return putImmutableTag(req, res, url, repository, reference);
    }
    if (method === 'GET' && blobDigest !== undefined && DIGEST.test(blobDigest)) {
      const head = await upstream('HEAD', `/v2/${name}/blobs/${blobDigest}`, internalHeaders());
      head.resume();
      if (head.statusCode === 200) {
        res.writeHead(307, {
          location: presign(name, blobDigest),
          'content-length': '0',
          'docker-distribution-api-version': 'registry/2.0',
        });
        res.end();
        return;
      }
    }
    return forward(req, res, url);
  }

  /** undefined when the request carries a live password this fixture issued. */
  function checkRegistryAuthorization(authorization: string | undefined): 'missing' | 'invalid' | 'expired' | undefined {
    if (!authorization) return 'missing';
    const [scheme, encoded] = authorization.split(' ', 2);
    if (scheme?.toLowerCase() !== 'basic' || !encoded) return 'invalid';
    const decoded = Buffer.from(encoded, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0 || decoded.slice(0, colon) !== 'AWS') return 'invalid';
    const password = decoded.slice(colon + 1);
    const token = tokens.find((t) => t.password === password);
    if (!token || token.revoked) return 'invalid';
    if (token.expiresAt.getTime() <= Date.now()) return 'expired';
    return undefined;
  }

  async function patchLikeEcr(req: IncomingMessage, res: ServerResponse, url: URL, uploadId: string): Promise<void> {
    const state = uploads.get(uploadId) ?? { patches: 0 };
    uploads.set(uploadId, state);
    state.patches++;
    if (state.patches > 1 && state.location !== undefined) {
      // The body is read and dropped; the offset does not move.
      await drain(req);
      res.writeHead(201, {
        location: state.location,
        ...(state.range !== undefined ? { range: state.range } : {}),
        'docker-upload-uuid': uploadId,
        'content-length': '0',
      });
      res.end();
      return;
    }
    const response = await upstream('PATCH', url.pathname + url.search, upstreamHeaders(req.headers), req);
    if (response.statusCode === 202) {
      state.location = header(response.headers, 'location');
      state.range = header(response.headers, 'range');
      return relay(response, res, 201);
    }
    return relay(response, res);
  }

  async function putImmutableTag(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    repository: EcrRepository,
    tag: string,
  ): Promise<void> {
    // One PUT per tag at a time, so two racing pushes cannot both see the tag missing.
    const key = `${repository.name}:${tag}`;
    const previous = tagLocks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const chained = previous.then(() => mine);
    tagLocks.set(key, chained);
    await previous;
    try {
      const head = await upstream('HEAD', `/v2/${repository.name}/manifests/${tag}`, {
        ...internalHeaders(),
        accept: MANIFEST_ACCEPT,
      });
      head.resume();
      if (head.statusCode === 200) {
        await drain(req);
        sendRegistryError(
          res,
          400,
          'TAG_INVALID',
          `The image tag '${tag}' already exists in the '${repository.name}' repository and cannot be overwritten ` +
            `because the repository is immutable.`,
        );
        return;
      }
      await forward(req, res, url);
      if (!res.writableFinished) await once(res, 'close');
    } finally {
      release();
      if (tagLocks.get(key) === chained) tagLocks.delete(key);
    }
  }

  async function forward(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const response = await upstream(req.method ?? 'GET', url.pathname + url.search, upstreamHeaders(req.headers), req);
    relay(response, res);
  }

  function relay(response: IncomingMessage, res: ServerResponse, status = response.statusCode ?? 502): void {
    const headers: OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(response.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name)) headers[name] = value;
    }
    if (status === 401) headers['www-authenticate'] = `Basic realm="${registryUrl}/",service="ecr.amazonaws.com"`;
    res.writeHead(status, headers);
    pipeline(response, res).catch(() => res.destroy());
  }

  function upstreamHeaders(incoming: IncomingHttpHeaders): OutgoingHttpHeaders {
    const headers: OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(incoming)) {
      if (value !== undefined && !HOP_BY_HOP.has(name) && name !== 'authorization') headers[name] = value;
    }
    // Host is kept as the client sent it: the registry builds upload Locations from it.
    headers.authorization = internalAuthorization;
    return headers;
  }

  function internalHeaders(): OutgoingHttpHeaders {
    return { authorization: internalAuthorization, host: registryHost };
  }

  function upstream(
    method: string,
    path: string,
    headers: OutgoingHttpHeaders,
    body?: IncomingMessage,
  ): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const request = httpRequest({ host: '127.0.0.1', port: registryPort, method, path, headers, agent }, resolve);
      request.once('error', reject);
      if (body) pipeline(body, request).catch((error: unknown) => request.destroy(error as Error));
      else request.end();
    });
  }

  // ------------------------------------------------------------------------------------------
  // S3 origin

  function presign(repository: string, digest: string): string {
    const key = `${accountId}/${createHash('sha256').update(`${repository}@${digest}`).digest('hex')}`;
    s3Objects.set(key, { repository, digest });
    const path = `/${bucket}/${key}`;
    const amzDate = amzDateOf(new Date());
    const query = new URLSearchParams({
      'X-Amz-Security-Token': randomBytes(48).toString('base64'),
      'X-Amz-Algorithm': 'AWS4-HMAC-SHA256',
      'X-Amz-Date': amzDate,
      'X-Amz-SignedHeaders': 'host',
      'X-Amz-Expires': String(presignLifetimeSeconds),
      'X-Amz-Credential': `ASIA${randomBase32(16)}/${amzDate.slice(0, 8)}/${region}/s3/aws4_request`,
    });
    query.set('X-Amz-Signature', s3Signature('GET', path, query));
    return `${s3Origin}${path}?${query.toString()}`;
  }

  function s3Signature(method: string, path: string, query: URLSearchParams): string {
    const signed = ['X-Amz-Security-Token', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-Credential']
      .map((name) => query.get(name) ?? '')
      .join('\n');
    return createHmac('sha256', s3Secret).update(`${method}\n${path}\n${signed}`).digest('hex');
  }

  s3.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const entry: S3Request = { method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers }, status: 0 };
    s3Requests.push(entry);
    res.once('close', () => (entry.status = res.statusCode));
    void handleS3(req, res).catch(() => {
      if (!res.headersSent) sendS3Error(res, 500, 'InternalError', 'We encountered an internal error. Please try again.');
      else res.destroy();
    });
  });

  async function handleS3(req: IncomingMessage, res: ServerResponse): Promise<void> {
    await drain(req);
    const url = new URL(req.url ?? '/', s3Origin);
    const query = url.searchParams;
    const authorization = header(req.headers, 'authorization');
    if (authorization !== undefined && query.has('X-Amz-Algorithm')) {
      return sendS3Error(
        res,
        400,
        'InvalidArgument',
        'Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string ' +
          'parameter or the Authorization header should be specified',
        { ArgumentName: 'Authorization', ArgumentValue: authorization },
      );
    }
    const required = [
      'X-Amz-Algorithm',
      'X-Amz-Credential',
      'X-Amz-Signature',
      'X-Amz-Date',
      'X-Amz-SignedHeaders',
      'X-Amz-Expires',
    ];
    if (required.some((name) => !query.has(name))) {
      return sendS3Error(
        res,
        403,
        'AccessDenied',
        `Query-string authentication version 4 requires the ${required.join(', ')} parameters`,
      );
    }
    // The method is part of what a presigned URL signs: HEAD on a GET URL does not verify.
    const expected = Buffer.from(s3Signature(req.method ?? 'GET', url.pathname, query));
    const given = Buffer.from(query.get('X-Amz-Signature') ?? '');
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
      return sendS3Error(
        res,
        403,
        'SignatureDoesNotMatch',
        'The request signature we calculated does not match the signature you provided. Check your key and signing method.',
      );
    }
    const signedAt = parseAmzDate(query.get('X-Amz-Date') ?? '');
    const expires = Number(query.get('X-Amz-Expires'));
    if (signedAt === undefined || Date.now() > signedAt + expires * 1000) {
      return sendS3Error(res, 403, 'AccessDenied', 'Request has expired', {
        'X-Amz-Expires': String(expires),
        ServerTime: new Date().toISOString(),
      });
    }
    const object = s3Objects.get(url.pathname.slice(bucket.length + 2));
    if (!object) return sendS3Error(res, 404, 'NoSuchKey', 'The specified key does not exist.');
    const range = header(req.headers, 'range');
    const response = await upstream('GET', `/v2/${object.repository}/blobs/${object.digest}`, {
      ...internalHeaders(),
      ...(range !== undefined ? { range } : {}),
    });
    const status = response.statusCode ?? 502;
    if (status === 404) {
      response.resume();
      return sendS3Error(res, 404, 'NoSuchKey', 'The specified key does not exist.');
    }
    if (status === 416) {
      response.resume();
      return sendS3Error(res, 416, 'InvalidRange', 'The requested range is not satisfiable');
    }
    if (status !== 200 && status !== 206) {
      response.resume();
      return sendS3Error(res, 500, 'InternalError', `registry answered ${status}`);
    }
    const headers: OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream',
      'accept-ranges': 'bytes',
      etag: `"${object.digest.slice(object.digest.indexOf(':') + 1, object.digest.indexOf(':') + 33)}"`,
      'last-modified': new Date(0).toUTCString(),
      'x-amz-request-id': randomBase32(16),
      server: 'AmazonS3',
    };
    for (const name of ['content-length', 'content-range']) {
      const value = header(response.headers, name);
      if (value !== undefined) headers[name] = value;
    }
    res.writeHead(status, headers);
    await pipeline(response, res).catch(() => res.destroy());
  }

  // ------------------------------------------------------------------------------------------

  function isImmutable(repository: EcrRepository, tag: string): boolean {
    const excluded = repository.tagMutabilityExclusionFilters.some((f) => wildcard(f.filter).test(tag));
    switch (repository.tagMutability) {
      case 'MUTABLE':
        return false;
      case 'IMMUTABLE':
        return true;
      case 'IMMUTABLE_WITH_EXCLUSION':
        return !excluded;
      case 'MUTABLE_WITH_EXCLUSION':
        return excluded;
    }
  }

  const stop = async (): Promise<void> => {
    await Promise.all(servers.map(closeServer));
    agent.destroy();
    await registry.stop();
  };

  return {
    endpoint,
    registryHost,
    registryUrl,
    s3Origin,
    accountId,
    region,
    accessKeyId: main.accessKeyId,
    secretAccessKey: main.secretAccessKey,
    env: {
      AWS_ENDPOINT_URL_ECR: endpoint,
      AWS_ACCESS_KEY_ID: main.accessKeyId,
      AWS_SECRET_ACCESS_KEY: main.secretAccessKey,
      AWS_REGION: region,
      ...(main.sessionToken !== undefined ? { AWS_SESSION_TOKEN: main.sessionToken } : {}),
    },
    repositories,
    requests,
    registryRequests,
    s3Requests,
    tokens,
    behaviour,
    registry,
    createRepository(name, create) {
      if (!REPOSITORY_NAME.test(name) || name.length < 2 || name.length > 256)
        throw new Error(`not an ECR repository name: ${name}`);
      return createRepository(name, create);
    },
    setRepositoryPolicy(name, policy) {
      const repository = repositories.get(name);
      if (!repository) throw new Error(`no repository ${name}`);
      if (policy) repository.policy = policy;
      else delete repository.policy;
    },
    issueToken,
    expireTokens() {
      const past = new Date(Date.now() - 1000);
      for (const token of tokens) if (token.expiresAt > past) token.expiresAt = past;
    },
    revokeTokens() {
      for (const token of tokens) token.revoked = true;
    },
    addCredentials(extra) {
      credentials.set(extra.accessKeyId, extra);
    },
    failNext(operation, error, times = 1) {
      const queue = injected.get(operation) ?? [];
      for (let i = 0; i < times; i++) {
        queue.push({ type: error.type, message: error.message ?? error.type, status: error.status ?? 400 });
      }
      injected.set(operation, queue);
    },
    stop,
  };
}

// ---------------------------------------------------------------------------------------------
// SigV4, recomputed from the request as AWS does (no code from an SDK: written from the
// published algorithm: canonical request, string to sign, derived signing key).

/** Returns the credentials the request was validly signed with, or throws the error AWS answers. */
export function verifySigV4(
  req: Pick<IncomingMessage, 'method' | 'url' | 'headers' | 'rawHeaders'>,
  body: Uint8Array,
  credentials: ReadonlyMap<string, AwsCredentials>,
  region: string,
  service: string,
  now: number,
): AwsCredentials {
  const authorization = header(req.headers, 'authorization');
  if (!authorization) throw new AwsApiError('MissingAuthenticationTokenException', 'Missing Authentication Token');
  const space = authorization.indexOf(' ');
  const algorithm = space < 0 ? authorization : authorization.slice(0, space);
  if (algorithm !== 'AWS4-HMAC-SHA256') {
    throw new AwsApiError('IncompleteSignatureException', `Unsupported AWS 'algorithm': '${algorithm}'`);
  }
  const params = new Map<string, string>();
  for (const part of authorization.slice(space + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) params.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const missing = ['Credential', 'Signature', 'SignedHeaders'].filter((name) => !params.get(name));
  if (missing.length > 0) {
    throw new AwsApiError(
      'IncompleteSignatureException',
      missing.map((name) => `Authorization header requires '${name}' parameter.`).join(' '),
    );
  }
  const scope = params.get('Credential')!.split('/');
  if (scope.length !== 5) {
    throw new AwsApiError(
      'IncompleteSignatureException',
      `Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term`,
    );
  }
  const [accessKeyId, scopeDate, scopeRegion, scopeService, terminator] = scope as [string, string, string, string, string];
  const signer = credentials.get(accessKeyId);
  if (!signer) throw new AwsApiError('UnrecognizedClientException', 'The security token included in the request is invalid.');
  const sessionToken = header(req.headers, 'x-amz-security-token');
  if (sessionToken !== signer.sessionToken) {
    throw new AwsApiError('UnrecognizedClientException', 'The security token included in the request is invalid.');
  }
  const amzDate = header(req.headers, 'x-amz-date');
  if (!amzDate) {
    throw new AwsApiError(
      'IncompleteSignatureException',
      `Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.`,
    );
  }
  const signedAt = parseAmzDate(amzDate);
  if (signedAt === undefined)
    throw new AwsApiError('IncompleteSignatureException', `X-Amz-Date must be in the ISO8601 Long Format: '${amzDate}'`);
  if (scopeDate !== amzDate.slice(0, 8)) {
    throw new AwsApiError(
      'InvalidSignatureException',
      `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${scopeDate}' != '${amzDate.slice(0, 8)}', from '${amzDate}'.`,
    );
  }
  if (scopeRegion !== region)
    throw new AwsApiError('InvalidSignatureException', `Credential should be scoped to a valid region, not '${scopeRegion}'. `);
  if (scopeService !== service)
    throw new AwsApiError('InvalidSignatureException', `Credential should be scoped to correct service: '${service}'. `);
  if (terminator !== 'aws4_request') {
    throw new AwsApiError(
      'InvalidSignatureException',
      `Credential should be scoped with a valid terminator: 'aws4_request', not '${terminator}'. `,
    );
  }
  const signedHeaders = params.get('SignedHeaders')!.split(';');
  if (!signedHeaders.includes('host')) {
    throw new AwsApiError(
      'IncompleteSignatureException',
      `'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.`,
    );
  }
  if (signedAt < now - MAX_SKEW_MS) {
    throw new AwsApiError(
      'InvalidSignatureException',
      `Signature expired: ${amzDate} is now earlier than ${amzDateOf(new Date(now - MAX_SKEW_MS))} (${amzDateOf(new Date(now))} - 15 min.)`,
    );
  }
  if (signedAt > now + MAX_SKEW_MS) {
    throw new AwsApiError(
      'InvalidSignatureException',
      `Signature not yet current: ${amzDate} is still later than ${amzDateOf(new Date(now + MAX_SKEW_MS))} (${amzDateOf(new Date(now))} + 15 min.)`,
    );
  }

  const values = new Map<string, string[]>();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!.toLowerCase();
    const list = values.get(name) ?? [];
    list.push(req.rawHeaders[i + 1]!.trim().replace(/\s+/g, ' '));
    values.set(name, list);
  }
  const rawUrl = req.url ?? '/';
  const queryStart = rawUrl.indexOf('?');
  const path = queryStart < 0 ? rawUrl : rawUrl.slice(0, queryStart);
  const query = queryStart < 0 ? '' : rawUrl.slice(queryStart + 1);
  const canonicalRequest = [
    req.method ?? 'GET',
    canonicalPath(path),
    canonicalQuery(query),
    signedHeaders.map((name) => `${name}:${(values.get(name) ?? []).join(',')}\n`).join(''),
    signedHeaders.join(';'),
    createHash('sha256').update(body).digest('hex'),
  ].join('\n');
  const stringToSign = [
    'AWS4-HMAC-SHA256',
    amzDate,
    `${scopeDate}/${scopeRegion}/${scopeService}/aws4_request`,
    createHash('sha256').update(canonicalRequest).digest('hex'),
  ].join('\n');
  let key: Buffer = hmac(`AWS4${signer.secretAccessKey}`, scopeDate);
  for (const part of [scopeRegion, scopeService, 'aws4_request']) key = hmac(key, part);
  const expected = Buffer.from(hmac(key, stringToSign).toString('hex'));
  const given = Buffer.from(params.get('Signature')!);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) {
    throw new AwsApiError(
      'InvalidSignatureException',
      'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key ' +
        'and signing method. Consult the service documentation for details.',
    );
  }
  return signer;
}

function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

/** RFC 3986 encoding: everything but unreserved characters. */
function uriEncode(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Non-S3 services encode each segment of the (already encoded) path once more. */
function canonicalPath(path: string): string {
  if (path === '' || path === '/') return '/';
  return path
    .split('/')
    .map((segment) => uriEncode(segment))
    .join('/');
}

function canonicalQuery(query: string): string {
  if (!query) return '';
  return query
    .split('&')
    .filter(Boolean)
    .map((pair) => {
      const eq = pair.indexOf('=');
      const name = eq < 0 ? pair : pair.slice(0, eq);
      const value = eq < 0 ? '' : pair.slice(eq + 1);
      return [uriEncode(safeDecode(name)), uriEncode(safeDecode(value))] as const;
    })
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function amzDateOf(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

function parseAmzDate(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  return Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
}

// ---------------------------------------------------------------------------------------------
// Helpers

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

function invalidParameter(field: string, constraint: string): AwsApiError {
  return new AwsApiError(
    'InvalidParameterException',
    `Invalid parameter at '${field}' failed to satisfy constraint: '${constraint}'`,
  );
}

function parseExclusionFilters(value: unknown): TagMutabilityExclusionFilter[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new AwsApiError('SerializationException', 'imageTagMutabilityExclusionFilters must be a list');
  return value.map((item: unknown) => {
    const filter = item as { filterType?: unknown; filter?: unknown };
    if (filter.filterType !== 'WILDCARD') throw invalidParameter('filterType', 'must satisfy enum value set: [WILDCARD]');
    if (typeof filter.filter !== 'string' || !/^[0-9a-zA-Z._*-]{1,128}$/.test(filter.filter)) {
      throw invalidParameter('filter', "must satisfy regular expression '^[0-9a-zA-Z._*-]{1,128}'");
    }
    return { filterType: 'WILDCARD', filter: filter.filter };
  });
}

function parseEncryption(value: unknown): EncryptionConfiguration {
  if (value === undefined) return { encryptionType: 'AES256' };
  const config = value as { encryptionType?: unknown; kmsKey?: unknown };
  if (typeof config.encryptionType !== 'string' || !ENCRYPTION_TYPES.includes(config.encryptionType as EncryptionType)) {
    throw invalidParameter('encryptionType', `must satisfy enum value set: [${ENCRYPTION_TYPES.join(', ')}]`);
  }
  const encryptionType = config.encryptionType as EncryptionType;
  if (config.kmsKey !== undefined && encryptionType === 'AES256') {
    throw new AwsApiError(
      'InvalidParameterException',
      'Invalid parameter: kmsKey can only be specified when encryptionType is KMS or KMS_DSSE',
    );
  }
  return typeof config.kmsKey === 'string' ? { encryptionType, kmsKey: config.kmsKey } : { encryptionType };
}

function wildcard(filter: string): RegExp {
  return new RegExp(
    `^${filter
      .split('*')
      .map((part) => part.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&'))
      .join('.*')}$`,
  );
}

/** The IAM action ECR checks for a registry request (docs: "Amazon ECR actions" for the API v2). */
function ecrAction(method: string, tail: string, uploadId: string | undefined): string | undefined {
  if (tail.startsWith('manifests/')) {
    if (method === 'GET' || method === 'HEAD') return 'ecr:BatchGetImage';
    if (method === 'PUT') return 'ecr:PutImage';
    if (method === 'DELETE') return 'ecr:BatchDeleteImage';
    return undefined;
  }
  if (uploadId !== undefined) {
    if (method === 'POST') return 'ecr:InitiateLayerUpload';
    if (method === 'PATCH') return 'ecr:UploadLayerPart';
    if (method === 'PUT') return 'ecr:CompleteLayerUpload';
    return undefined;
  }
  if (tail.startsWith('blobs/')) return method === 'HEAD' ? 'ecr:BatchCheckLayerAvailability' : 'ecr:GetDownloadUrlForLayer';
  if (tail === 'tags/list') return 'ecr:ListImages';
  return 'ecr:BatchGetImage';
}

function sendApiError(res: ServerResponse, error: AwsApiError): void {
  res.writeHead(error.status, { 'content-type': JSON_CONTENT_TYPE, 'x-amzn-requestid': randomUUID() });
  res.end(JSON.stringify({ __type: error.type, message: error.message }));
}

function sendRegistryError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: OutgoingHttpHeaders = {},
): void {
  const body = JSON.stringify({ errors: [{ code, message }] });
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'docker-distribution-api-version': 'registry/2.0',
    ...extra,
  });
  res.end(body);
}

function sendS3Error(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
): void {
  const escape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const fields = Object.entries(extra)
    .map(([name, value]) => `<${name}>${escape(value)}</${name}>`)
    .join('');
  const body =
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${escape(message)}</Message>${fields}` +
    `<RequestId>${randomBase32(16)}</RequestId><HostId>${randomBytes(48).toString('base64')}</HostId></Error>`;
  res.writeHead(status, {
    'content-type': 'application/xml',
    'content-length': String(Buffer.byteLength(body)),
    server: 'AmazonS3',
  });
  // HEAD answers carry no body (Node drops it anyway); the status says enough.
  res.end(body);
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new AwsApiError('SerializationException', `request body larger than ${limit} bytes`, 413);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function drain(req: IncomingMessage): Promise<void> {
  if (req.readableEnded) return;
  req.resume();
  await once(req, 'end').catch(() => undefined);
}

async function drainThen(req: IncomingMessage, answer: () => void): Promise<void> {
  await drain(req);
  answer();
}

function generatedCredentials(): AwsCredentials {
  return { accessKeyId: `AKIA${randomBase32(16)}`, secretAccessKey: randomBytes(30).toString('base64') };
}

function randomBase32(length: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  return [...randomBytes(length)].map((b) => alphabet[b % 32]).join('');
}

/** Listens, and hands the server to `servers` (what stop() closes) once it does. */
async function listen(server: Server, host: string, servers: Server[]): Promise<{ server: Server; port: number }> {
  const port = await listenOnLoopback(server, host);
  servers.push(server);
  return { server, port };
}
