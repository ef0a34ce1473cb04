import { startWorkerFunction } from '../support/clone-function.ts';
import { describeHostileRegistries } from './hostile-scenarios.ts';

describeHostileRegistries('worker', startWorkerFunction);
