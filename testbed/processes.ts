import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`; resolves once it has. */
export async function stopChild(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}
