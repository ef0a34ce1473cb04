import { describe, expect, it } from 'vitest';
import type { CloneJob } from '../../functions/jobs.ts';
import { jobKey, openJob, sealJob } from '../../functions/sealed-jobs.ts';

const job: CloneJob = {
  id: 'job-1',
  images: ['nginx:1', { image: 'private.example/app:2', credentials: { username: 'team-a', password: 'pull-secret-of-team-a' } }],
  callback: { url: 'http://bridge/callback', context: { workloads: ['Deployment/a/app'] } },
};

describe('queued jobs', () => {
  it('carry their credentials sealed, and open to the same job', async () => {
    const key = await jobKey('callback-secret-0123456789');
    const queued = await sealJob(job, key);
    expect(JSON.stringify(queued)).toContain('job-1');
    expect(JSON.stringify(queued)).not.toContain('pull-secret-of-team-a');
    expect(JSON.stringify(queued)).not.toContain('private.example');
    expect(await openJob(queued, key)).toEqual(job);
  });

  it('do not open under another secret, nor moved to another job', async () => {
    const queued = await sealJob(job, await jobKey('callback-secret-0123456789'));
    await expect(openJob(queued, await jobKey('another-secret-0123456789'))).rejects.toThrow();
    await expect(openJob({ ...queued, id: 'job-2' }, await jobKey('callback-secret-0123456789'))).rejects.toThrow();
  });

  it('leave a job without credentials as it is', async () => {
    const plain = { ...job, images: ['nginx:1'] };
    const key = await jobKey('callback-secret-0123456789');
    expect(await sealJob(plain, key)).toEqual(plain);
    expect(await openJob(await sealJob(plain, key), key)).toEqual(plain);
  });
});
