import { startWorkerFunction } from '../support/clone-function.ts';
import { describeCloneScenarios } from './clone-scenarios.ts';

describeCloneScenarios('worker', startWorkerFunction);
