import { once } from 'node:events';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The repository: where the testbed's processes run and its files are read from. */
export const REPO_ROOT = fileURLToPath(new URL('../', import.meta.url));

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`; resolves once it has. */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

const PDEATHSIG: readonly string[] = (() => {
  const probe = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
  return probe.status === 0 && probe.stdout.includes('--pdeathsig') ? ['--pdeathsig', 'KILL', '--'] : [];
})();

/**
 * `command args` as spawn's first two arguments, under setpriv --pdeathsig so the kernel kills it
 * when this process dies, however it dies (vitest ends its workers with signals, which skip
 * 'exit' handlers). Without a setpriv that knows the option, the command as it is.
 */
export function diesWithThisProcess(command: string, args: readonly string[]): [string, string[]] {
  return PDEATHSIG.length > 0 ? ['setpriv', [...PDEATHSIG, command, ...args]] : [command, [...args]];
}

const running = new Set<ChildProcess>();
process.once('exit', () => running.forEach((child) => child.kill('SIGKILL')));

/** SIGKILLs `child` if this process exits (normally, or by process.exit) while it still runs. */
export function killOnExit(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
}
