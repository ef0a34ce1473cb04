import { startNodeFunction } from '../support/clone-function.ts';
import { describeCloneScenarios } from './clone-scenarios.ts';

describeCloneScenarios('node', startNodeFunction);
