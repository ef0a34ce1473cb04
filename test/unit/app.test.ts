import { describe, expect, it } from 'vitest';
import { createApp } from '../../functions/app.ts';
import type { CloneJob } from '../../functions/jobs.ts';
import { imageOfRequest, type CloneEvent, type CloneResult, type ImageRequest } from '../../functions/contract/index.ts';
import type { CloneEngine } from '../../functions/engine.ts';

const TOKEN = 'a-long-enough-test-token';
const silent = { info() {}, warn() {}, error() {}, debug() {} };

/** An engine that answers from a table, so the HTTP layer is tested on its own. */
function fakeEngine(): CloneEngine & { calls: string[][]; requests: ImageRequest[][] } {
  const calls: string[][] = [];
  const requests: ImageRequest[][] = [];
  return {
    calls,
    requests,
    async cloneAll(asked, emit?: (event: CloneEvent) => void) {
      requests.push([...asked]);
      const images = asked.map(imageOfRequest);
      calls.push(images);
      return images.map((image): CloneResult => {
        emit?.({ type: 'image', source: image, status: 'started' });
        const result: CloneResult = image.includes('broken')
          ? { source: image, status: 'failed', error: 'boom', ms: 1 }
          : { source: image, target: `backup/${image}`, digest: 'sha256:x', status: 'copied', bytes: 3, ms: 1 };
        emit?.({ type: 'result', result });
        return result;
      });
    },
  };
}

function setup(options: { jobs?: CloneJob[]; callbackOrigins?: string[] } = {}) {
  const engine = fakeEngine();
  const app = createApp({
    authToken: TOKEN,
    engine,
    logger: silent,
    maxImagesPerRequest: 3,
    callbackOrigins: new Set(options.callbackOrigins ?? ['http://bridge']),
    newJobId: () => 'job-1',
    ...(options.jobs && { jobs: { submit: async (job: CloneJob) => void options.jobs!.push(job) } }),
  });
  const post = (body: string, headers: Record<string, string> = {}) =>
    app.request('/clone', {
      method: 'POST',
      body,
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...headers },
    });
  return { app, engine, post };
}

describe('POST /clone', () => {
  it('answers one result per image, in order, a failure next to successes', async () => {
    const { post, engine } = setup();
    const response = await post(JSON.stringify({ images: ['nginx:1', 'broken/x', 'quay.io/a/b'] }));
    expect(response.status).toBe(200);
    const body = (await response.json()) as { results: CloneResult[] };
    expect(body.results.map((r) => [r.source, r.status])).toEqual([
      ['nginx:1', 'copied'],
      ['broken/x', 'failed'],
      ['quay.io/a/b', 'copied'],
    ]);
    // What the tests below rely on when they find no call: a request that is copied is recorded.
    expect(engine.calls).toEqual([['nginx:1', 'broken/x', 'quay.io/a/b']]);
  });

  it.each([
    ['{"images": [', /not valid JSON/],
    ['{}', /missing field "images"/],
    ['{"images": "nginx"}', /must be a list/],
    ['{"images": []}', /at least one image/],
    ['{"images": [1]}', /each image must be a reference/],
    ['{"images": ["a","b","c","d"]}', /more than 3 images/],
    ['{"images": ["a"], "extra": true}', /unknown field\(s\) "extra"/],
    ['{"images": ["Upper/Case"]}', /images\[0\].*must be lowercase/],
    ['{"images": ["ok", "bad image"]}', /images\[1\]/],
    ['{"images": ["a"], "callback": {"url": "ftp://x"}}', /http\(s\) URL/],
    [JSON.stringify({ images: ['a'], pad: 'x'.repeat(300 * 1024) }), /larger than 256 KiB/],
  ])('refuses %s with 400 and a clear message', async (body, message) => {
    const { post, engine } = setup();
    const response = await post(body);
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: string }).error).toMatch(message);
    expect(engine.calls).toEqual([]);
  });

  it('refuses a missing or wrong token with 401, and serves /healthz without one', async () => {
    const { app } = setup();
    const body = JSON.stringify({ images: ['a'] });
    expect((await app.request('/clone', { method: 'POST', body })).status).toBe(401);
    const wrong = await app.request('/clone', { method: 'POST', body, headers: { authorization: 'Bearer nope' } });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await app.request('/clone', { method: 'POST', body, headers: { authorization: `Basic ${TOKEN}` } })).status).toBe(
      401,
    );
    expect((await app.request('/healthz')).status).toBe(200);
  });

  it('streams NDJSON progress ending with the results', async () => {
    const { post } = setup();
    const response = await post(JSON.stringify({ images: ['a', 'broken/b'] }), { accept: 'application/x-ndjson' });
    expect(response.headers.get('content-type')).toBe('application/x-ndjson');
    const lines = (await response.text())
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    expect(lines.map((l) => l.type)).toEqual(['image', 'result', 'image', 'result', 'done']);
    expect(lines.at(-1).results).toHaveLength(2);
  });

  it('accepts a callback job with 202 and hands it to the job runner', async () => {
    const jobs: CloneJob[] = [];
    const { post, engine } = setup({ jobs });
    const response = await post(
      JSON.stringify({ images: ['a'], callback: { url: 'http://bridge/cb', context: { key: 'ns/x' } } }),
    );
    expect(response.status).toBe(202);
    expect(await response.json()).toEqual({ job: 'job-1' });
    expect(jobs).toEqual([{ id: 'job-1', images: ['a'], callback: { url: 'http://bridge/cb', context: { key: 'ns/x' } } }]);
    expect(engine.calls).toEqual([]);
  });

  it('takes an image with the credentials of its workload, and never repeats them', async () => {
    const { post, engine } = setup();
    const credentials = { username: 'tenant', password: 'pull-secret-of-team-a' };
    const response = await post(JSON.stringify({ images: ['nginx:1', { image: 'private.example/app:2', credentials }] }));
    expect(response.status).toBe(200);
    expect(engine.requests).toEqual([['nginx:1', { image: 'private.example/app:2', credentials }]]);
    const refused = await post(
      JSON.stringify({ images: [{ image: 'a', credentials: { username: 'u', password: '', extra: 'pull-secret-of-team-a' } }] }),
    );
    expect(refused.status).toBe(400);
    expect(await refused.text()).not.toContain('pull-secret-of-team-a');
  });

  it('posts callbacks only to the origins the operator allows', async () => {
    const jobs: CloneJob[] = [];
    const answer = async (callbackOrigins: string[], url: string) => {
      const response = await setup({ jobs, callbackOrigins }).post(JSON.stringify({ images: ['a'], callback: { url } }));
      return { status: response.status, error: ((await response.json()) as { error?: string }).error };
    };
    expect(await answer(['http://bridge'], 'http://169.254.169.254/latest/meta-data')).toEqual({
      status: 400,
      error: '"callback.url": http://169.254.169.254 is not an allowed origin (CALLBACK_ORIGINS)',
    });
    expect((await answer(['http://bridge'], 'http://bridge:8081/cb')).status).toBe(400);
    expect((await answer([], 'http://bridge/cb')).error).toMatch(/CALLBACK_ORIGINS is not set/);
    expect(jobs).toEqual([]);
    expect((await answer(['http://bridge'], 'http://bridge/callback?x=1')).status).toBe(202);
    expect(jobs).toHaveLength(1);
  });

  it('bounds callback.context, which comes back in the callback as sent', async () => {
    const jobs: CloneJob[] = [];
    const { post } = setup({ jobs });
    const nested = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
    const deep = await post(`{"images":["a"],"callback":{"url":"http://bridge/cb","context":${nested}}}`);
    expect(deep.status).toBe(400);
    expect(((await deep.json()) as { error: string }).error).toMatch(/nested more than 16 levels/);
    const large = await post(
      JSON.stringify({ images: ['a'], callback: { url: 'http://bridge/cb', context: 'x'.repeat(20_000) } }),
    );
    expect(((await large.json()) as { error: string }).error).toMatch(/larger than 16 KiB/);
    const bridgeShaped = await post(
      JSON.stringify({ images: ['a'], callback: { url: 'http://bridge/cb', context: { workloads: ['Deployment/ns/x'] } } }),
    );
    expect(bridgeShaped.status).toBe(202);
    expect(jobs).toHaveLength(1);
  });

  it('refuses a callback when no CALLBACK_SECRET is configured', async () => {
    const { post } = setup();
    const response = await post(JSON.stringify({ images: ['a'], callback: { url: 'http://bridge/cb' } }));
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: string }).error).toMatch(/CALLBACK_SECRET/);
  });
});
