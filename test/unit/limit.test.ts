import { describe, expect, it } from 'vitest';
import { blobUnits, SMALL_BLOB_BYTES } from '../../functions/copy/blob.ts';
import { mapLimit, Semaphore } from '../../lib/semaphore.ts';
import { allSettled } from '../../lib/settle.ts';

/** A task that stays running until release() is called for it. */
function gate() {
  let release!: () => void;
  const done = new Promise<void>((resolve) => (release = resolve));
  return { done, release };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('Semaphore', () => {
  it('never holds more units than its size, and lets waiters in as units come back', async () => {
    const semaphore = new Semaphore(4);
    const gates = [gate(), gate(), gate()];
    const started: number[] = [];
    const runs = [3, 2, 1].map((units, index) =>
      semaphore.run(async () => {
        started.push(index);
        expect(semaphore.used).toBeLessThanOrEqual(4);
        await gates[index]!.done;
      }, units),
    );
    await turn();
    // 3 units taken; the 2-unit holder does not fit, and the 1-unit one waits behind it.
    expect(started).toEqual([0]);
    expect(semaphore.used).toBe(3);
    gates[0]!.release();
    await turn();
    expect(started).toEqual([0, 1, 2]);
    expect(semaphore.used).toBe(3);
    gates[1]!.release();
    gates[2]!.release();
    await Promise.all(runs);
    expect(semaphore.used).toBe(0);
  });

  it('does not let small holders pass a large one that waits', async () => {
    const semaphore = new Semaphore(4);
    const order: string[] = [];
    const first = gate();
    const holding = semaphore.run(() => first.done, 1);
    const large = semaphore.run(async () => void order.push('large'), 4);
    const small = semaphore.run(async () => void order.push('small'), 1);
    await turn();
    // 3 units are free, enough for the small one, but the large one came first.
    expect(order).toEqual([]);
    first.release();
    await Promise.all([holding, large, small]);
    expect(order).toEqual(['large', 'small']);
  });

  it('gives the units back when the task throws', async () => {
    const semaphore = new Semaphore(2);
    await expect(semaphore.run(async () => Promise.reject(new Error('boom')), 2)).rejects.toThrow('boom');
    expect(semaphore.used).toBe(0);
    await expect(semaphore.run(async () => 'next', 2)).resolves.toBe('next');
  });

  it('refuses sizes and unit counts it could never satisfy', async () => {
    expect(() => new Semaphore(0)).toThrow(RangeError);
    const semaphore = new Semaphore(2);
    await expect(semaphore.run(async () => 1, 3)).rejects.toThrow('1 to 2 units');
    await expect(semaphore.run(async () => 1, 0)).rejects.toThrow(RangeError);
  });
});

describe('mapLimit', () => {
  it('keeps the order of the items and at most `concurrency` tasks at once', async () => {
    let running = 0;
    let most = 0;
    const results = await mapLimit([5, 1, 4, 2, 3], 2, async (item, index) => {
      running++;
      most = Math.max(most, running);
      await new Promise((resolve) => setTimeout(resolve, item));
      running--;
      return `${index}:${item}`;
    });
    expect(results).toEqual(['0:5', '1:1', '2:4', '3:2', '4:3']);
    expect(most).toBe(2);
  });

  it('after a failure starts nothing more, and throws the first failure only once the running tasks have ended', async () => {
    const started: number[] = [];
    const ended: number[] = [];
    const outcome = mapLimit([0, 1, 2, 3, 4], 2, async (item) => {
      started.push(item);
      await new Promise((resolve) => setTimeout(resolve, item === 0 ? 1 : 30));
      ended.push(item);
      if (item === 0) throw new Error('first');
      if (item === 1) throw new Error('second');
      return item;
    });
    await expect(outcome).rejects.toThrow('first');
    expect(started).toEqual([0, 1]);
    expect(ended).toEqual([0, 1]);
  });
});

describe('allSettled', () => {
  it('answers like Promise.all when all succeed', async () => {
    const [text, number] = await allSettled([Promise.resolve('a'), Promise.resolve(1)]);
    expect([text, number]).toEqual(['a', 1]);
  });

  it('rejects with the first failure in time, only once every promise has settled', async () => {
    let slowEnded = false;
    const slow = new Promise<string>((resolve) =>
      setTimeout(() => {
        slowEnded = true;
        resolve('slow');
      }, 30),
    );
    const late = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('late')), 10));
    const early = Promise.reject(new Error('early'));
    const outcome = allSettled([slow, late, early]).catch((error: Error) => ({ error, slowEnded }));
    // Promise.all would answer at once, the slow one still running: the control.
    const usual = await Promise.all([slow, late, early]).catch((error: Error) => ({ error, slowEnded }));
    expect(usual).toEqual({ error: new Error('early'), slowEnded: false });
    expect(await outcome).toEqual({ error: new Error('early'), slowEnded: true });
  });
});

describe('blobUnits', () => {
  it('counts a blob under 1 MiB as one unit and a larger one as a whole slot', () => {
    expect(blobUnits(4096, 4)).toBe(1);
    expect(blobUnits(SMALL_BLOB_BYTES - 1, 4)).toBe(1);
    expect(blobUnits(SMALL_BLOB_BYTES, 4)).toBe(4);
    expect(blobUnits(40 * SMALL_BLOB_BYTES, 4)).toBe(4);
    expect(blobUnits(4096, 1)).toBe(1);
  });
});
