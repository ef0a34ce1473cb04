// What /proc says about the processes under benchmark: memory of the function, CPU time of the
// function and of the registries (the registries are found by their config file's path).

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Registry } from '../testbed/registry.ts';

export interface Memory {
  /** Resident set now (VmRSS), KiB. */
  rssKiB: number;
  /** Peak resident set since the process started (VmHWM), KiB. */
  peakKiB: number;
}

/** VmRSS and VmHWM of a live process, from /proc/<pid>/status. */
export function processMemory(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!match) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(match[1]);
  };
  return { rssKiB: field('VmRSS'), peakKiB: field('VmHWM') };
}

/** User + system CPU time of a live process so far, in ms (clock ticks are 1/100 s on Linux). */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** The docker-registry process serving `registry` (testbed/registry.ts starts it with its config path). */
export function registryPid(registry: Pick<Registry, 'storageDir'>): number {
  const config = join(dirname(registry.storageDir), 'config.yml');
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    const argv = cmdline.split('\0');
    if (argv[0]?.endsWith('docker-registry') && argv.includes(config)) return Number(entry);
  }
  throw new Error(`no docker-registry process for ${config}`);
}

/** The 1-minute load average: other work on the machine skews every number. */
export function loadAverage(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}
