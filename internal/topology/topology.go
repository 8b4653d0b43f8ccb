// Package topology is the one place that defines every NATS name the
// pipeline uses: streams, subjects, buckets, consumers and headers, and
// creates or updates them.
package topology

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// Streams.
const (
	// StreamRaw holds upstream incidents exactly as received: the replay source.
	StreamRaw = "INCIDENTS_RAW"
	// StreamEnriched holds incidents with their resolved employee.
	StreamEnriched = "INCIDENTS_ENRICHED"
	// StreamDLQ holds what a stage could not process, with the reason.
	StreamDLQ = "INCIDENTS_DLQ"
)

// Key-value buckets.
const (
	// BucketIdentities maps IPKey(ip) to an employee id.
	BucketIdentities = "IDENTITIES"
	// BucketView maps an employee id to its GET /incidents document, and
	// UnattributedPrefix+IPKey(ip) to that IP's unattributed incidents.
	BucketView = "INCIDENT_VIEW"
)

// Durable consumers: named after the stage that owns them.
const (
	ConsumerEnricher  = "enricher"
	ConsumerProjector = "projector"
)

// Stage names, as used in DLQ subjects and metric labels.
const (
	StageProducers = "producers"
	StageEnricher  = "enricher"
	StageProjector = "projector"
	StageAPI       = "api"
)

// Subject roots.
const (
	RawSubjects      = "incidents.raw.>"
	EnrichedSubjects = "incidents.enriched.>"
	DLQSubjects      = "incidents.dlq.>"
	rawPrefix        = "incidents.raw."
	enrichedPrefix   = "incidents.enriched."
	unattributedTok  = "unattributed"
	dlqPrefix        = "incidents.dlq."
)

// Headers.
const (
	// HeaderMsgID is JetStream's de-duplication header.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderDLQReason is the short reason token of a dead-lettered message.
	HeaderDLQReason = "Incident-Dlq-Reason"
	// HeaderDLQError is the human-readable reason of a dead-lettered message.
	HeaderDLQError = "Incident-Dlq-Error"
	// HeaderDLQSubject is the subject a dead-lettered message was read from.
	HeaderDLQSubject = "Incident-Dlq-Subject"
	// HeaderDLQStream and HeaderDLQSequence name the stream and sequence a
	// dead-lettered message was read from, so that the original can be
	// found when the letter could not carry it whole.
	HeaderDLQStream   = "Incident-Dlq-Stream"
	HeaderDLQSequence = "Incident-Dlq-Sequence"
	// HeaderDLQCut is the original size in bytes of a dead-lettered message
	// whose letter keeps only its beginning (it would not fit in one
	// message beside its headers).
	HeaderDLQCut = "Incident-Dlq-Cut"
	// HeaderReattributed marks an enriched incident that was published
	// unattributed before and has now been attributed.
	HeaderReattributed = "Incident-Reattributed"
)

// Atomic batch publishing (nats-server 2.12+, on streams that allow it): the
// messages of one batch are stored together or not at all, and the server
// fsyncs the batch once, where one publish at a time costs an fsync each
// when JetStream syncs always.
const (
	// HeaderBatchID names the batch a message belongs to (at most 64 bytes).
	HeaderBatchID = "Nats-Batch-Id"
	// HeaderBatchSequence is a message's position in its batch, from 1.
	HeaderBatchSequence = "Nats-Batch-Sequence"
	// HeaderBatchCommit, set to BatchCommit on the last message, commits it.
	HeaderBatchCommit = "Nats-Batch-Commit"
	// BatchCommit is the value of HeaderBatchCommit that commits a batch.
	BatchCommit = "1"
	// BatchAbandon is a value of HeaderBatchCommit the server refuses,
	// which drops a batch at once rather than after its timeout.
	BatchAbandon = "abandon"
	// BatchMax is the most messages in one batch (the server's default
	// limit, max_batch_size).
	BatchMax = 1000
)

// UnattributedPrefix starts the view keys of unattributed documents.
const UnattributedPrefix = unattributedTok + "."

// RebuildKey is the view key that marks a rebuild in progress: its value is
// the RFC 3339 time until which the API keeps serving the view it had.
const RebuildKey = "rebuilding"

// CanonicalKeysKey is the view key that marks its employee keys all in
// canonical form (migrated from an earlier version's spellings).
const CanonicalKeysKey = "migrated.canonical-ids"

// KVStream is the name of the stream that holds a key-value bucket.
func KVStream(bucket string) string { return "KV_" + bucket }

// KV's wire format, for the writes and reads done many at a time rather
// than through jetstream.KeyValue one round trip each (nats.go keeps these
// names private).
const (
	// HeaderKVOperation marks a delete ("DEL") or purge ("PURGE") of a key.
	HeaderKVOperation = "KV-Operation"
	KVOperationDelete = "DEL"
	KVOperationPurge  = "PURGE"
	// HeaderRollup with RollupSubject makes a message replace every earlier
	// one of its subject (how a purge drops a key's history).
	HeaderRollup  = "Nats-Rollup"
	RollupSubject = "sub"
	// HeaderStatus, HeaderDescription and HeaderNumPending are on the
	// answers of a direct get of many subjects: "404" (none), "204" (the
	// end, and how many were left unanswered).
	HeaderStatus      = "Status"
	HeaderDescription = "Description"
	HeaderNumPending  = "Nats-Num-Pending"
)

// KVSubject is the subject a put of key in bucket is published on.
func KVSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// KVKeyOfSubject returns the key of a subject of bucket.
func KVKeyOfSubject(bucket, subject string) (string, bool) {
	return strings.CutPrefix(subject, KVSubject(bucket, ""))
}

// DirectGetSubject is where a direct get of a bucket's stream is asked
// (a batch of the last messages of many subjects, "multi_last").
func DirectGetSubject(bucket string) string { return "$JS.API.DIRECT.GET." + KVStream(bucket) }

// RawSubject is the subject of raw incidents of type t.
func RawSubject(t incident.Type) string { return rawPrefix + string(t) }

// TypeOfRawSubject returns the incident type a raw subject carries.
func TypeOfRawSubject(subject string) (incident.Type, error) {
	name, ok := strings.CutPrefix(subject, rawPrefix)
	if !ok {
		return "", fmt.Errorf("subject %q is not a raw incident subject", subject)
	}
	return incident.ParseType(name)
}

// EnrichedSubject is the subject of incidents attributed to employee.
func EnrichedSubject(employee string) string { return enrichedPrefix + employee }

// UnattributedSubject is the subject of incidents whose IP no identity covers.
func UnattributedSubject(ip netip.Addr) string {
	return enrichedPrefix + UnattributedPrefix + incident.IPKey(ip)
}

// EnrichedTarget returns whom an enriched subject is for: an employee
// (canonical id), or the IP key of an unattributed incident.
func EnrichedTarget(subject string) (employee, ipKey string, err error) {
	rest, ok := strings.CutPrefix(subject, enrichedPrefix)
	if !ok {
		return "", "", fmt.Errorf("subject %q is not an enriched incident subject", subject)
	}
	if ipKey, ok := strings.CutPrefix(rest, UnattributedPrefix); ok {
		return "", ipKey, nil
	}
	employee, err = incident.ParseEmployeeID(rest)
	if err != nil {
		return "", "", fmt.Errorf("subject %q names no employee", subject)
	}
	return employee, "", nil
}

// UnattributedSubjects matches every unattributed incident.
const UnattributedSubjects = enrichedPrefix + unattributedTok + ".>"

// DLQSubject is where stage dead-letters incidents of type t: a known
// type, or "invalid" for anything else (none, or a token such as "a b" or
// "x.>" that would make the subject invalid or match others).
func DLQSubject(stage, t string) string {
	if _, err := incident.ParseType(t); err != nil {
		t = InvalidTypeToken
	}
	return dlqPrefix + stage + "." + t
}

// InvalidTypeToken stands in a DLQ subject for a type that is not known.
const InvalidTypeToken = "invalid"

// EmployeeKey is the view key of an employee's document.
func EmployeeKey(employee string) string { return employee }

// UnattributedKey is the view key of an IP's unattributed document.
func UnattributedKey(ip netip.Addr) string { return UnattributedPrefix + incident.IPKey(ip) }

// IdentityKey is the IDENTITIES key of an IP.
func IdentityKey(ip netip.Addr) string { return incident.IPKey(ip) }
