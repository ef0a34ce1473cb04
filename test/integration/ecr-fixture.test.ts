// Proves the local ECR stand-in (testbed/ecr.ts) with the real AWS SDK v3 and with skopeo,
// so that tests of the copy engine against it can trust it.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  CreateRepositoryCommand,
  DescribeRepositoriesCommand,
  ECRClient,
  ECRServiceException,
  GetAuthorizationTokenCommand,
  InvalidParameterException,
  ListImagesCommand,
  RepositoryAlreadyExistsException,
  RepositoryNotFoundException,
} from '@aws-sdk/client-ecr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEcr, type Ecr } from '../../testbed/ecr.ts';
import {
  fetchManifest,
  ociImage,
  pushBlob,
  pushImage,
  registrySession,
  sha256Digest,
  type TestImage,
} from '../../testbed/images.ts';
import { startRegistry, type Registry } from '../../testbed/registry.ts';

const execFileAsync = promisify(execFile);

/** Everything the SDK reads from the environment; cleared, set for the fixture, then restored. */
const AWS_VARIABLES = [
  'AWS_ENDPOINT_URL_ECR',
  'AWS_ENDPOINT_URL',
  'AWS_IGNORE_CONFIGURED_ENDPOINT_URLS',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'AWS_SESSION_TOKEN',
  'AWS_REGION',
  'AWS_DEFAULT_REGION',
  'AWS_PROFILE',
  'AWS_CONFIG_FILE',
  'AWS_SHARED_CREDENTIALS_FILE',
  'AWS_EC2_METADATA_DISABLED',
];

let ecr: Ecr;
let source: Registry;
let savedEnvironment: Record<string, string | undefined>;

beforeAll(async () => {
  [ecr, source] = await Promise.all([startEcr(), startRegistry()]);
  savedEnvironment = Object.fromEntries(AWS_VARIABLES.map((name) => [name, process.env[name]]));
  for (const name of AWS_VARIABLES) delete process.env[name];
  Object.assign(process.env, ecr.env, {
    // Nothing from this machine's ~/.aws may leak in.
    AWS_CONFIG_FILE: '/nonexistent/aws-config',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
    AWS_EC2_METADATA_DISABLED: 'true',
  });
});

afterAll(async () => {
  for (const name of AWS_VARIABLES) {
    const value = savedEnvironment?.[name];
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await Promise.all([ecr?.stop(), source?.stop()]);
});

interface Login {
  username: string;
  password: string;
  authorization: string;
}

/** GetAuthorizationToken through the SDK, configured by the environment alone. */
async function login(): Promise<Login> {
  const out = await new ECRClient({}).send(new GetAuthorizationTokenCommand({}));
  const decoded = Buffer.from(out.authorizationData![0]!.authorizationToken!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  const username = decoded.slice(0, colon);
  const password = decoded.slice(colon + 1);
  return { username, password, authorization: `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}` };
}

async function rejection(promise: Promise<unknown>): Promise<ECRServiceException> {
  try {
    await promise;
  } catch (error) {
    return error as ECRServiceException;
  }
  throw new Error('expected the call to fail');
}

async function registryErrors(res: Response): Promise<Array<{ code: string; message: string }>> {
  return ((await res.json()) as { errors: Array<{ code: string; message: string }> }).errors;
}

async function skopeo(args: string[]): Promise<void> {
  await execFileAsync('skopeo', args, { timeout: 60_000 });
}

describe('API endpoint, through the real AWS SDK v3', () => {
  it('is found through AWS_ENDPOINT_URL_ECR; GetAuthorizationToken gives Basic credentials the registry takes', async () => {
    const out = await new ECRClient({}).send(new GetAuthorizationTokenCommand({}));
    const data = out.authorizationData?.[0];
    expect(out.authorizationData).toHaveLength(1);
    expect(data?.proxyEndpoint).toBe(`http://${ecr.registryHost}`);
    expect(data?.expiresAt).toBeInstanceOf(Date);
    expect(Math.abs(data!.expiresAt!.getTime() - (Date.now() + 12 * 3600_000))).toBeLessThan(60_000);
    const decoded = Buffer.from(data!.authorizationToken!, 'base64').toString('utf8');
    expect(decoded).toMatch(/^AWS:[A-Za-z0-9+/=]{1000,}$/);
    expect(ecr.requests.at(-1)).toMatchObject({
      target: 'AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken',
      ok: true,
      accessKeyId: ecr.accessKeyId,
    });

    const authorization = `Basic ${data!.authorizationToken!}`;
    const granted = await fetch(`${ecr.registryUrl}/v2/`, { headers: { authorization } });
    expect(granted.status).toBe(200);
    const anonymous = await fetch(`${ecr.registryUrl}/v2/`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toBe(`Basic realm="${ecr.registryUrl}/",service="ecr.amazonaws.com"`);
    const forged = await fetch(`${ecr.registryUrl}/v2/`, {
      headers: { authorization: `Basic ${Buffer.from('AWS:not-a-token').toString('base64')}` },
    });
    expect(forged.status).toBe(401);
  });

  it('CreateRepository creates once; a repeat surfaces as RepositoryAlreadyExistsException', async () => {
    const client = new ECRClient({});
    const created = await client.send(
      new CreateRepositoryCommand({
        repositoryName: 'team/app',
        imageTagMutability: 'IMMUTABLE',
        imageScanningConfiguration: { scanOnPush: true },
        encryptionConfiguration: { encryptionType: 'AES256' },
      }),
    );
    expect(created.repository).toMatchObject({
      repositoryName: 'team/app',
      registryId: ecr.accountId,
      repositoryArn: `arn:aws:ecr:${ecr.region}:${ecr.accountId}:repository/team/app`,
      repositoryUri: `${ecr.registryHost}/team/app`,
      imageTagMutability: 'IMMUTABLE',
      imageScanningConfiguration: { scanOnPush: true },
      encryptionConfiguration: { encryptionType: 'AES256' },
    });
    expect(created.repository?.createdAt).toBeInstanceOf(Date);
    expect(Math.abs(created.repository!.createdAt!.getTime() - Date.now())).toBeLessThan(10_000);

    const again = await rejection(client.send(new CreateRepositoryCommand({ repositoryName: 'team/app' })));
    expect(again).toBeInstanceOf(RepositoryAlreadyExistsException);
    expect(again.message).toBe(`The repository with name 'team/app' already exists in the registry with id '${ecr.accountId}'`);
    expect(again.$metadata.httpStatusCode).toBe(400);
    expect(ecr.repositories.get('team/app')).toMatchObject({
      tagMutability: 'IMMUTABLE',
      scanOnPush: true,
      encryption: { encryptionType: 'AES256' },
      createdCount: 1,
      createCalls: 2,
    });
    expect(ecr.requests.filter((r) => r.operation === 'CreateRepository').at(-1)).toMatchObject({
      ok: false,
      status: 400,
      error: 'RepositoryAlreadyExistsException',
    });
  });

  it.each(['a', 'Team/app', 'team//app', 'team/app/', '-team', `x${'y'.repeat(256)}`])(
    'refuses the repository name %j with InvalidParameterException',
    async (repositoryName) => {
      const error = await rejection(new ECRClient({}).send(new CreateRepositoryCommand({ repositoryName })));
      expect(error).toBeInstanceOf(InvalidParameterException);
      expect(error.message).toMatch(/^Invalid parameter at 'repositoryName' failed to satisfy constraint: /);
      expect(ecr.repositories.has(repositoryName)).toBe(false);
    },
  );

  it('DescribeRepositories: an unknown name is RepositoryNotFoundException, a known one is described', async () => {
    const client = new ECRClient({});
    const missing = await rejection(client.send(new DescribeRepositoriesCommand({ repositoryNames: ['no/such-repo'] })));
    expect(missing).toBeInstanceOf(RepositoryNotFoundException);
    expect(missing.message).toBe(
      `The repository with name 'no/such-repo' does not exist in the registry with id '${ecr.accountId}'`,
    );

    await client.send(new CreateRepositoryCommand({ repositoryName: 'described' }));
    const found = await client.send(new DescribeRepositoriesCommand({ repositoryNames: ['described'] }));
    expect(found.repositories).toEqual([
      expect.objectContaining({
        repositoryName: 'described',
        imageTagMutability: 'MUTABLE',
        repositoryUri: `${ecr.registryHost}/described`,
      }),
    ]);
  });

  it('a wrong secret key is refused with InvalidSignatureException, an unknown key id with UnrecognizedClientException', async () => {
    const before = ecr.requests.length;
    const wrongSecret = new ECRClient({
      credentials: { accessKeyId: ecr.accessKeyId, secretAccessKey: `${ecr.secretAccessKey}x` },
    });
    const invalid = await rejection(wrongSecret.send(new CreateRepositoryCommand({ repositoryName: 'forged' })));
    expect(invalid).toBeInstanceOf(ECRServiceException);
    expect(invalid.name).toBe('InvalidSignatureException');
    expect(invalid.message).toMatch(/^The request signature we calculated does not match the signature you provided/);
    expect(invalid.$metadata).toMatchObject({ httpStatusCode: 400, attempts: 1 });
    expect(ecr.repositories.has('forged')).toBe(false);

    const unknownKey = new ECRClient({
      credentials: { accessKeyId: 'AKIAUNKNOWNKEY000000', secretAccessKey: ecr.secretAccessKey },
    });
    const unrecognized = await rejection(unknownKey.send(new GetAuthorizationTokenCommand({})));
    expect(unrecognized.name).toBe('UnrecognizedClientException');
    expect(unrecognized.message).toBe('The security token included in the request is invalid.');
    expect(ecr.requests.slice(before).map((r) => r.error)).toEqual(['InvalidSignatureException', 'UnrecognizedClientException']);
  });

  it('the signature covers the body: a body changed after signing is refused', async () => {
    const client = new ECRClient({});
    client.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { body?: unknown };
        // The serialised body is a string or bytes depending on the SDK's version.
        const text = typeof request.body === 'string' ? request.body : Buffer.from(request.body as Uint8Array).toString('utf8');
        expect(text).toContain('"tampered"');
        request.body = text.replace('tampered', 'tempered');
        return next(args);
      },
      // After signing (finalizeRequest), just before the request is sent.
      { step: 'deserialize', name: 'tamperAfterSigning' },
    );
    const error = await rejection(client.send(new CreateRepositoryCommand({ repositoryName: 'tampered' })));
    expect(error.name).toBe('InvalidSignatureException');
    expect(ecr.repositories.has('tempered')).toBe(false);
    expect(ecr.repositories.has('tampered')).toBe(false);
  });

  it('session credentials: the SDK signs X-Amz-Security-Token; a wrong or missing token is refused', async () => {
    const session = { accessKeyId: 'ASIAFIXTURESESSION01', secretAccessKey: 'session-secret', sessionToken: 'session-token-1' };
    ecr.addCredentials(session);
    const ok = await new ECRClient({ credentials: session }).send(new GetAuthorizationTokenCommand({}));
    expect(ok.authorizationData).toHaveLength(1);

    const wrongToken = new ECRClient({ credentials: { ...session, sessionToken: 'session-token-2' } });
    expect((await rejection(wrongToken.send(new GetAuthorizationTokenCommand({})))).name).toBe('UnrecognizedClientException');
    const noToken = new ECRClient({
      credentials: { accessKeyId: session.accessKeyId, secretAccessKey: session.secretAccessKey },
    });
    expect((await rejection(noToken.send(new GetAuthorizationTokenCommand({})))).name).toBe('UnrecognizedClientException');
  });

  it('a client clock 20 minutes slow: refused as expired, then the SDK corrects its clock from Date and retries', async () => {
    const before = ecr.requests.length;
    const client = new ECRClient({ systemClockOffset: -20 * 60_000 });
    const out = await client.send(new DescribeRepositoriesCommand({}));
    expect(out.repositories?.length).toBeGreaterThan(0);
    const calls = ecr.requests.slice(before);
    expect(calls.map((c) => c.error ?? 'ok')).toEqual(['InvalidSignatureException', 'ok']);
    expect(calls[0]?.message).toMatch(
      /^Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z \(\d{8}T\d{6}Z - 15 min\.\)$/,
    );
  });

  it('an injected ThrottlingException is retried by the SDK; an operation it does not know is UnknownOperationException', async () => {
    ecr.failNext('DescribeRepositories', { type: 'ThrottlingException', message: 'Rate exceeded' });
    const out = await new ECRClient({}).send(new DescribeRepositoriesCommand({ repositoryNames: ['described'] }));
    expect(out.$metadata.attempts).toBe(2);

    const unknown = await rejection(new ECRClient({}).send(new ListImagesCommand({ repositoryName: 'described' })));
    expect(unknown.name).toBe('UnknownOperationException');
    expect(unknown.$metadata.httpStatusCode).toBe(400);
  });
});

describe('registry, behaving as ECR does', () => {
  let credentials: Login;
  const client = (): ECRClient => new ECRClient({});

  beforeAll(async () => {
    credentials = await login();
  });

  it('refuses a push into a repository CreateRepository did not create: 404 NAME_UNKNOWN', async () => {
    const message = `The repository with name 'not/created' does not exist in the registry with id '${ecr.accountId}'`;
    const upload = await fetch(`${ecr.registryUrl}/v2/not/created/blobs/uploads/`, {
      method: 'POST',
      headers: { authorization: credentials.authorization },
    });
    expect(upload.status).toBe(404);
    expect(await registryErrors(upload)).toEqual([{ code: 'NAME_UNKNOWN', message }]);

    const image = ociImage('uncreated');
    const manifest = await fetch(`${ecr.registryUrl}/v2/not/created/manifests/v1`, {
      method: 'PUT',
      headers: { authorization: credentials.authorization, 'content-type': image.root.mediaType },
      body: image.manifests[0]!.bytes,
    });
    expect(manifest.status).toBe(404);
    expect(await registryErrors(manifest)).toEqual([{ code: 'NAME_UNKNOWN', message }]);
  });

  it('refuses to overwrite a tag of an IMMUTABLE repository, even with the same image: 400 TAG_INVALID', async () => {
    await client().send(new CreateRepositoryCommand({ repositoryName: 'immutable/app', imageTagMutability: 'IMMUTABLE' }));
    const first = ociImage('immutable-1');
    const second = ociImage('immutable-2');
    await pushImage(ecr.registryHost, 'immutable/app', first, { tag: 'v1', credentials });
    await pushImage(ecr.registryHost, 'immutable/app', second, { credentials });

    const message = `The image tag 'v1' already exists in the 'immutable/app' repository and cannot be overwritten because the repository is immutable.`;
    for (const image of [second, first]) {
      const overwrite = await fetch(`${ecr.registryUrl}/v2/immutable/app/manifests/v1`, {
        method: 'PUT',
        headers: { authorization: credentials.authorization, 'content-type': image.root.mediaType },
        body: image.manifests[0]!.bytes,
      });
      expect(overwrite.status).toBe(400);
      expect(await registryErrors(overwrite)).toEqual([{ code: 'TAG_INVALID', message }]);
    }
    const kept = await fetchManifest(ecr.registryHost, 'immutable/app', 'v1', { credentials });
    expect(kept.headers.get('docker-content-digest')).toBe(first.root.digest);
    // A new tag, and pushes by digest, are fine.
    await pushImage(ecr.registryHost, 'immutable/app', second, { tag: 'v2', credentials });

    // A MUTABLE repository takes the overwrite; an excluded tag of an IMMUTABLE_WITH_EXCLUSION one too.
    await client().send(new CreateRepositoryCommand({ repositoryName: 'mutable/app' }));
    await pushImage(ecr.registryHost, 'mutable/app', first, { tag: 'v1', credentials });
    await pushImage(ecr.registryHost, 'mutable/app', second, { tag: 'v1', credentials });
    await client().send(
      new CreateRepositoryCommand({
        repositoryName: 'excluded/app',
        imageTagMutability: 'IMMUTABLE_WITH_EXCLUSION',
        imageTagMutabilityExclusionFilters: [{ filterType: 'WILDCARD', filter: 'latest*' }],
      }),
    );
    await pushImage(ecr.registryHost, 'excluded/app', first, { tag: 'latest', credentials });
    await pushImage(ecr.registryHost, 'excluded/app', second, { tag: 'latest', credentials });
    await pushImage(ecr.registryHost, 'excluded/app', first, { tag: 'v1', credentials });
    await expect(pushImage(ecr.registryHost, 'excluded/app', second, { tag: 'v1', credentials })).rejects.toThrow(/TAG_INVALID/);
  });

  it('answers a blob GET with 307 to the S3 origin, which refuses a second auth mechanism', async () => {
    ecr.createRepository('redirected/app');
    const image = ociImage('redirected', { layerSize: 64 * 1024 });
    await pushImage(ecr.registryHost, 'redirected/app', image, { tag: 'v1', credentials });
    const blob = image.blobs.at(-1)!;
    const blobUrl = `${ecr.registryUrl}/v2/redirected/app/blobs/${blob.digest}`;

    const redirect = await fetch(blobUrl, { headers: { authorization: credentials.authorization }, redirect: 'manual' });
    expect(redirect.status).toBe(307);
    const location = new URL(redirect.headers.get('location')!);
    expect(location.origin).toBe(ecr.s3Origin);
    expect(location.hostname).not.toBe('127.0.0.1');
    for (const name of ['X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-Signature']) {
      expect(location.searchParams.has(name)).toBe(true);
    }

    const direct = await fetch(location);
    expect(direct.status).toBe(200);
    expect(sha256Digest(new Uint8Array(await direct.arrayBuffer()))).toBe(blob.digest);
    expect(ecr.s3Requests.at(-1)?.headers.authorization).toBeUndefined();

    const twoMechanisms = await fetch(location, { headers: { authorization: credentials.authorization } });
    expect(twoMechanisms.status).toBe(400);
    const xml = await twoMechanisms.text();
    expect(xml).toContain('<Code>InvalidArgument</Code>');
    expect(xml).toContain('Only one auth mechanism allowed');
    expect(ecr.s3Requests.at(-1)?.headers.authorization).toBe(credentials.authorization);

    // A presigned GET URL does not verify for HEAD; a Range is served.
    expect((await fetch(location, { method: 'HEAD' })).status).toBe(403);
    const part = await fetch(location, { headers: { range: 'bytes=0-9' } });
    expect(part.status).toBe(206);
    expect(Buffer.from(await part.arrayBuffer()).equals(Buffer.from(blob.bytes.subarray(0, 10)))).toBe(true);

    // fetch follows the redirect and drops Authorization for the other origin.
    const followed = await fetch(blobUrl, { headers: { authorization: credentials.authorization } });
    expect(followed.status).toBe(200);
    expect(sha256Digest(new Uint8Array(await followed.arrayBuffer()))).toBe(blob.digest);
    expect(ecr.s3Requests.at(-1)?.headers.authorization).toBeUndefined();

    // HEAD of a blob is answered by the registry itself.
    const head = await fetch(blobUrl, { method: 'HEAD', headers: { authorization: credentials.authorization } });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(blob.bytes.length));
  });

  it('answers PATCH with 201; drops the body of every PATCH after the first, so that upload fails', async () => {
    ecr.createRepository('chunked/app');
    const session = registrySession(ecr.registryHost, { credentials });
    const bytes = new Uint8Array(4096).map((_, i) => i % 251);
    const digest = sha256Digest(bytes);

    const upload = async (chunks: Uint8Array[]): Promise<Response> => {
      const start = await session.fetch('/v2/chunked/app/blobs/uploads/', { method: 'POST' });
      expect(start.status).toBe(202);
      let location = new URL(start.headers.get('location')!, session.base);
      let offset = 0;
      for (const chunk of chunks) {
        const patch = await session.fetch(location.href, {
          method: 'PATCH',
          headers: {
            'content-type': 'application/octet-stream',
            'content-range': `${offset}-${offset + chunk.length - 1}`,
          },
          body: chunk,
        });
        expect(patch.status).toBe(ecr.behaviour.chunkedUploads === 'ecr' ? 201 : 202);
        location = new URL(patch.headers.get('location')!, session.base);
        offset += chunk.length;
      }
      location.searchParams.set('digest', digest);
      return session.fetch(location.href, { method: 'PUT' });
    };

    expect((await upload([bytes])).status).toBe(201);
    await session.fetch(`/v2/chunked/app/blobs/${digest}`, { method: 'DELETE' });
    const broken = await upload([bytes.subarray(0, 2048), bytes.subarray(2048)]);
    expect(broken.status).toBe(400);
    expect((await registryErrors(broken))[0]?.code).toBe('DIGEST_INVALID');

    ecr.behaviour.chunkedUploads = 'spec';
    try {
      expect((await upload([bytes.subarray(0, 2048), bytes.subarray(2048)])).status).toBe(201);
    } finally {
      ecr.behaviour.chunkedUploads = 'ecr';
    }
  });

  it('ignores a cross-repository mount unless BLOB_MOUNTING is on', async () => {
    ecr.createRepository('mount/from');
    ecr.createRepository('mount/to');
    const session = registrySession(ecr.registryHost, { credentials });
    const blob = { digest: sha256Digest(new Uint8Array([1, 2, 3])), bytes: new Uint8Array([1, 2, 3]) };
    await pushBlob(session, 'mount/from', blob);
    const mountUrl = `/v2/mount/to/blobs/uploads/?mount=${blob.digest}&from=mount/from`;
    expect((await session.fetch(mountUrl, { method: 'POST' })).status).toBe(202);
    ecr.behaviour.blobMounting = true;
    try {
      expect((await session.fetch(mountUrl, { method: 'POST' })).status).toBe(201);
    } finally {
      ecr.behaviour.blobMounting = false;
    }
  });

  it('a repository policy that denies ecr:PutImage refuses the manifest PUT with 403 DENIED', async () => {
    const repository = ecr.createRepository('denied/app');
    ecr.setRepositoryPolicy('denied/app', { deny: ['ecr:PutImage'] });
    const image = ociImage('denied');
    const error = await pushImage(ecr.registryHost, 'denied/app', image, { tag: 'v1', credentials }).catch((e: unknown) => e);
    expect(String(error)).toContain('403');
    expect(String(error)).toContain(`not authorized to perform: ecr:PutImage on resource: ${repository.arn}`);
    ecr.setRepositoryPolicy('denied/app', undefined);
    await pushImage(ecr.registryHost, 'denied/app', image, { tag: 'v1', credentials });
  });

  it('skopeo, an independent client, copies in (its PATCH answered 201) and back out through the S3 redirect', async () => {
    const image: TestImage = ociImage('skopeo', { layers: 3, layerSize: 256 * 1024 });
    await pushImage(source.host, 'source/app', image, { tag: 'v1' });
    await client().send(new CreateRepositoryCommand({ repositoryName: 'mirror/app' }));
    const creds = `${credentials.username}:${credentials.password}`;
    const tls = ['--src-tls-verify=false', '--dest-tls-verify=false'];

    const into = ecr.registryRequests.length;
    await skopeo([
      'copy',
      ...tls,
      '--dest-creds',
      creds,
      `docker://${source.host}/source/app:v1`,
      `docker://${ecr.registryHost}/mirror/app:v1`,
    ]);
    const pushed = ecr.registryRequests.slice(into);
    expect(pushed.filter((r) => r.method === 'PATCH').map((r) => r.status)).toEqual(image.blobs.map(() => 201));
    const copied = await fetchManifest(ecr.registryHost, 'mirror/app', 'v1', { credentials });
    expect(copied.headers.get('docker-content-digest')).toBe(image.root.digest);

    // Out into a directory, so that skopeo downloads every blob (into a registry it may mount
    // blobs it has seen there instead).
    const s3Before = ecr.s3Requests.length;
    const dir = await mkdtemp(join(tmpdir(), 'ecr-skopeo-'));
    try {
      await skopeo([
        'copy',
        '--src-tls-verify=false',
        '--src-creds',
        creds,
        `docker://${ecr.registryHost}/mirror/app:v1`,
        `dir:${dir}`,
      ]);
      expect(sha256Digest(await readFile(join(dir, 'manifest.json')))).toBe(image.root.digest);
      for (const blob of image.blobs) {
        expect(sha256Digest(await readFile(join(dir, blob.digest.slice('sha256:'.length))))).toBe(blob.digest);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const downloads = ecr.s3Requests.slice(s3Before);
    expect(downloads.length).toBe(image.blobs.length);
    expect(downloads.every((r) => r.status === 200 && r.headers.authorization === undefined)).toBe(true);

    const refused = await skopeo([
      'copy',
      ...tls,
      '--dest-creds',
      creds,
      `docker://${source.host}/source/app:v1`,
      `docker://${ecr.registryHost}/never/created:v1`,
    ]).catch((e: unknown) => e as { stderr: string });
    expect(refused?.stderr).toContain(
      `The repository with name 'never/created' does not exist in the registry with id '${ecr.accountId}'`,
    );
  });
});

describe('registry passwords', () => {
  let shortLived: Ecr;

  beforeAll(async () => {
    shortLived = await startEcr({ tokenLifetimeSeconds: 1 });
  });

  afterAll(async () => {
    await shortLived?.stop();
  });

  it('expire after the configured lifetime (403 DENIED, as ECR), and stop working when revoked (401)', async () => {
    const basic = (password: string): string => `Basic ${Buffer.from(`AWS:${password}`).toString('base64')}`;
    const token = shortLived.issueToken();
    expect(token.expiresAt.getTime() - Date.now()).toBeLessThanOrEqual(1000);
    expect((await fetch(`${shortLived.registryUrl}/v2/`, { headers: { authorization: basic(token.password) } })).status).toBe(
      200,
    );
    await new Promise((resolve) => setTimeout(resolve, token.expiresAt.getTime() - Date.now() + 50));
    const expired = await fetch(`${shortLived.registryUrl}/v2/`, { headers: { authorization: basic(token.password) } });
    expect(expired.status).toBe(403);
    expect(await registryErrors(expired)).toEqual([
      { code: 'DENIED', message: 'Your authorization token has expired. Reauthenticate and try again.' },
    ]);

    const fresh = shortLived.issueToken();
    shortLived.revokeTokens();
    expect((await fetch(`${shortLived.registryUrl}/v2/`, { headers: { authorization: basic(fresh.password) } })).status).toBe(
      401,
    );
    const rotated = shortLived.issueToken();
    expect((await fetch(`${shortLived.registryUrl}/v2/`, { headers: { authorization: basic(rotated.password) } })).status).toBe(
      200,
    );
  });
});
