import { describe, expect, it } from 'vitest';
import { FairSemaphore } from '../../lib/fair-semaphore.ts';

function gate() {
  let release!: () => void;
  const done = new Promise<void>((resolve) => (release = resolve));
  return { done, release };
}
const turn = () => new Promise((resolve) => setImmediate(resolve));

describe('FairSemaphore', () => {
  it('keeps the reserve for other parties, whatever one party asks for', async () => {
    const semaphore = new FairSemaphore(8, 2);
    const slow = Array.from({ length: 10 }, () => gate());
    const started: string[] = [];
    const runs = slow.map((g, i) => semaphore.run('slow', async () => void (started.push(`slow-${i}`), await g.done)));
    await turn();
    expect(semaphore.used('slow')).toBe(6);
    const other = semaphore.run('other', async () => void started.push('other'));
    await other;
    expect(started).toContain('other');
    slow.forEach((g) => g.release());
    await Promise.all(runs);
    expect(started.filter((name) => name.startsWith('slow'))).toHaveLength(10);
    expect(semaphore.used()).toBe(0);
  });

  it("gives a holder's units back when its signal aborts, though its task never settles, and only once", async () => {
    const semaphore = new FairSemaphore(2, 0);
    const stuck = new AbortController();
    void semaphore.run('a', () => new Promise<never>(() => {}), 2, stuck.signal);
    await turn();
    let ran = false;
    const next = semaphore.run('b', async () => void (ran = true));
    await turn();
    expect(ran).toBe(false); // the control: held while not aborted
    stuck.abort();
    await next;
    expect(ran).toBe(true);
    expect(semaphore.used()).toBe(0);

    // A task that does end after its abort does not give its units back twice.
    const late = new AbortController();
    const finish = gate();
    const ending = semaphore.run('a', () => finish.done, 2, late.signal);
    await turn();
    late.abort();
    const other = gate();
    const holding = semaphore.run('b', () => other.done, 2);
    await turn();
    expect(semaphore.used()).toBe(2);
    finish.release();
    await ending;
    expect(semaphore.used()).toBe(2);
    other.release();
    await holding;
    expect(semaphore.used()).toBe(0);
  });

  it('serves waiting parties in turn, each in its own order', async () => {
    const semaphore = new FairSemaphore(1, 0);
    const first = gate();
    const order: string[] = [];
    const holder = semaphore.run('a', () => first.done);
    const waiting = [
      semaphore.run('a', async () => void order.push('a1')),
      semaphore.run('a', async () => void order.push('a2')),
      semaphore.run('b', async () => void order.push('b1')),
      semaphore.run('c', async () => void order.push('c1')),
      semaphore.run('b', async () => void order.push('b2')),
    ];
    first.release();
    await Promise.all([holder, ...waiting]);
    expect(order).toEqual(['a1', 'b1', 'c1', 'a2', 'b2']);
  });

  it('does not let small holders of other parties starve a large one', async () => {
    const semaphore = new FairSemaphore(4, 1);
    const held = gate();
    const first = semaphore.run('a', () => held.done, 3);
    const large = semaphore.run('b', async () => 'large', 3);
    await turn();
    const small = semaphore.run('c', async () => 'small', 1);
    await turn();
    // One unit is free, but the large holder of b waits first: c waits behind it.
    expect(semaphore.used('c')).toBe(0);
    held.release();
    expect(await large).toBe('large');
    expect(await small).toBe('small');
    await first;
  });
});
