import { startNodeFunction } from '../support/clone-function.ts';
import { describeHostileRegistries } from './hostile-scenarios.ts';

describeHostileRegistries('node', startNodeFunction);
