// Package faults is the fault harness: it runs the pipeline on a file
// system that loses unsynced writes (lazyfs) against an upstream that lists
// each incident only for a window of time, records every incident the API
// showed, cuts the power at random moments and at named operations, and
// checks after recovery that nothing shown was lost, duplicated or moved.
package faults
