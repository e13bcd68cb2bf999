package pool

// Operation is a statement's kind, from its first keyword. The set is small and fixed so that
// the operation label of query metrics stays bounded whatever SQL an application sends.
type Operation uint8

// The operations, in label order. OpOther covers every keyword not listed.
const (
	OpOther Operation = iota
	OpSelect
	OpInsert
	OpUpdate
	OpDelete
	OpMerge
	OpWith
	OpBegin
	OpCommit
	OpRollback
	OpSavepoint
	OpCopy
	OpCreate
	OpAlter
	OpDrop
	OpTruncate
	OpSet
	OpShow
	OpExplain
	OpCall
	OpLock
	OpListen
	OpNotify
	OpPrepare
	OpExecute
	OpVacuum
	OpAnalyze
	OpDiscard
	OpFetch
	numOperations
)

var opNames = [numOperations]string{
	"other", "select", "insert", "update", "delete", "merge", "with", "begin", "commit", "rollback",
	"savepoint", "copy", "create", "alter", "drop", "truncate", "set", "show", "explain", "call",
	"lock", "listen", "notify", "prepare", "execute", "vacuum", "analyze", "discard", "fetch",
}

// String returns the operation's metric label value.
func (o Operation) String() string {
	if o >= numOperations {
		return "other"
	}
	return opNames[o]
}

// Operations returns every operation label value, for pre-creating series and for docs.
func Operations() []string { return opNames[:] }

// keywordOps maps first keywords (lower case) to operations; synonyms share an operation.
var keywordOps = map[string]Operation{
	"select": OpSelect, "values": OpSelect, "table": OpSelect,
	"insert": OpInsert, "update": OpUpdate, "delete": OpDelete, "merge": OpMerge, "with": OpWith,
	"begin": OpBegin, "start": OpBegin,
	"commit": OpCommit, "end": OpCommit,
	"rollback": OpRollback, "abort": OpRollback,
	"savepoint": OpSavepoint, "release": OpSavepoint,
	"copy": OpCopy, "create": OpCreate, "alter": OpAlter, "drop": OpDrop, "truncate": OpTruncate,
	"set": OpSet, "reset": OpSet, "show": OpShow, "explain": OpExplain, "call": OpCall, "do": OpCall,
	"lock": OpLock, "listen": OpListen, "unlisten": OpListen, "notify": OpNotify,
	"prepare": OpPrepare, "deallocate": OpPrepare, "execute": OpExecute,
	"vacuum": OpVacuum, "analyze": OpAnalyze, "analyse": OpAnalyze, "discard": OpDiscard,
	"fetch": OpFetch, "move": OpFetch, "declare": OpFetch, "close": OpFetch,
}

// ClassifyOperation returns the operation of a SQL text: its first keyword after whitespace,
// comments and opening parentheses. It does not allocate.
func ClassifyOperation(sql string) Operation {
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '(' || c == ';':
			i++
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			// Block comments nest in PostgreSQL.
			depth := 0
			for i < len(sql) {
				if i+1 < len(sql) && sql[i] == '/' && sql[i+1] == '*' {
					depth++
					i += 2
				} else if i+1 < len(sql) && sql[i] == '*' && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		default:
			return keywordOp(sql[i:])
		}
	}
	return OpOther
}

func keywordOp(s string) Operation {
	var buf [10]byte
	n := 0
	for n < len(s) {
		c := s[n]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c < 'a' || c > 'z' {
			break
		}
		if n == len(buf) {
			return OpOther
		}
		buf[n] = c
		n++
	}
	if op, ok := keywordOps[string(buf[:n])]; ok {
		return op
	}
	return OpOther
}
