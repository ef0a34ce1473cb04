// Notices when something that should make progress has made none for a while: a transfer whose
// bytes stopped flowing, a server that accepted a request and never answers.

export class StallWatch {
  readonly #ms: number;
  readonly #onStall: () => void;
  #last: number;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** Calls `onStall` once when `touch` has not been called for `ms` (from now). */
  constructor(ms: number, onStall: () => void) {
    this.#ms = ms;
    this.#onStall = onStall;
    this.#last = Date.now();
    this.#arm(ms);
  }

  /** Progress: cheap enough to call for every chunk (the timer is moved only when it fires). */
  touch(): void {
    this.#last = Date.now();
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #arm(ms: number): void {
    this.#timer = setTimeout(() => {
      const quiet = Date.now() - this.#last;
      if (quiet < this.#ms) return this.#arm(this.#ms - quiet);
      this.#timer = undefined;
      this.#onStall();
    }, ms);
    // A watch alone must not keep a Node process alive (workerd's timers are numbers).
    (this.#timer as { unref?: () => void }).unref?.();
  }
}
