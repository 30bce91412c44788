// HL7 v2 messages (ER7, "pipe and hat" encoding), versions 2.3 to 2.8.
//
// parse() reads the delimiters from MSH-1/MSH-2, converts the text to UTF-8 as MSH-18 says
// (UTF-8 by default; GB 18030 / GBK / GB 2312 as many Chinese HIS and LIS send, through iconv),
// splits segments on \r, \n or \r\n, and resolves escape sequences (\F\ \S\ \T\ \R\ \E\ \.br\,
// and \Xhh..\ hex bytes) in every leaf value. Z-segments are kept like any other. An empty field
// and the HL7 null `""` stay different. Problems are values with a location and a table 0357 code,
// never crashes; malformed input still yields every segment that could be read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace yilian::mappers::hl7v2 {

// HL7 table 0357 (message error condition codes), as ERR-3 carries them.
enum class error_code : int {
  accepted = 0,
  segment_sequence = 100,
  required_field_missing = 101,
  data_type = 102,
  table_value_not_found = 103,
  value_too_long = 104,
  unsupported_message_type = 200,
  unsupported_event = 201,
  unsupported_processing_id = 202,
  unsupported_version = 203,
  unknown_key = 204,
  duplicate_key = 205,
  application_record_locked = 206,
  application_internal_error = 207,
};

// Where in a message: segment id and its occurrence (1-based among segments with that id), then
// field, repetition, component, sub-component (1-based; 0 = not narrowed). text() gives the
// notation used in ERR-2 and in messages: "PID-7", "OBX[3]-5", "PID-3(2).4".
struct location {
  std::string segment;
  std::size_t occurrence = 1;
  int field = 0;
  int repetition = 0;  // 0 or 1 = first
  int component = 0;
  int subcomponent = 0;
  std::string text() const;
  // The inverse of text() ("OBX[2]-5(3).1.2"); nullopt when the notation is malformed.
  static std::optional<location> parse(std::string_view notation);
  bool operator==(const location&) const = default;
};

struct problem {
  location where;
  error_code code = error_code::application_internal_error;
  std::string message;  // English, for the ERR segment and logs
  bool is_warning = false;
};

// A leaf or composite value. A field holds repetitions; each repetition holds components, each
// component sub-components. `null` is the HL7 explicit null "" (delete the value downstream).
// A null repetition has no components. A component sent as `""` among others (`a^""^c`) keeps the
// two quotes as its text.
struct component {
  std::vector<std::string> subcomponents;  // decoded UTF-8, escapes resolved
  bool operator==(const component&) const = default;
};
struct repetition {
  std::vector<component> components;
  bool null = false;
  bool operator==(const repetition&) const = default;
};
struct field {
  std::vector<repetition> repetitions;  // empty: the field was empty
  bool operator==(const field&) const = default;
};
struct segment {
  std::string id;              // "MSH", "PID", "ZPI"
  std::vector<field> fields;   // fields[0] is field 1 (for MSH: MSH-1, the field separator)

  // Field `number` (1-based), or null when the segment has fewer fields.
  const field* field_at(int number) const;
  // One leaf (all numbers 1-based); "" when absent or null.
  std::string value(int field, int repetition = 1, int component = 1, int subcomponent = 1) const;
  bool operator==(const segment&) const = default;
};

struct delimiters {
  char field = '|';
  char component = '^';
  char repetition = '~';
  char escape = '\\';
  char subcomponent = '&';
  char truncation = 0;  // 2.7+: '#' when MSH-2 has five characters
};

class message {
 public:
  std::vector<segment> segments;
  delimiters separators;
  std::string charset;  // MSH-18 as sent ("" = default, UTF-8)

  // The n-th segment with this id (1-based), or null.
  const segment* find(std::string_view id, std::size_t occurrence = 1) const;
  std::vector<const segment*> all(std::string_view id) const;

  // A leaf value by location: "PID-5.1", "PID-3(2).4.1", "OBX[2]-5"; "" when absent. Components
  // and sub-components default to the first.
  std::string value(std::string_view path) const;
  // Whether the field repetition at `path` ("PID-8", "PID-3(2)") is the HL7 null "".
  bool is_null(std::string_view path) const;

  // MSH shortcuts.
  std::string message_type() const;     // MSH-9.1 ("ORU")
  std::string trigger_event() const;    // MSH-9.2 ("R01")
  std::string control_id() const;       // MSH-10
  std::string version() const;          // MSH-12.1
  std::string sending_facility() const; // MSH-4.1
};

struct parse_options {
  // Applied when MSH-18 is empty: e.g. "GB18030" for a sender known to omit it.
  std::string default_charset;
  // Larger inputs are refused with one problem (no segment is read).
  std::size_t max_bytes = 64u << 20;
  // Most elements (segments, fields, repetitions, leaf values) kept; parsing stops with a problem
  // beyond (bounds memory on hostile input).
  std::size_t max_values = 4'000'000;
};

struct parse_result {
  std::optional<message> parsed;  // absent only when there is no usable MSH segment
  std::vector<problem> problems;  // errors and warnings with their locations

  bool ok() const noexcept;  // parsed and no error (warnings allowed)
};

parse_result parse(std::string_view bytes, const parse_options& options = {});

// ER7 text of a message built or changed in code (escapes applied), segments ended by \r.
// MSH-1/MSH-2 come from m.separators; the text is converted to the charset MSH-18 names (UTF-8
// when empty or unknown; characters that charset cannot hold become '?').
std::string encode(const message& m);

// The iconv name for an MSH-18 value (HL7 table 0211 names and common aliases: "UNICODE UTF-8",
// "GB 18030-2000", "GBK", "GB2312", "CNS 11643-1992", "BIG-5", "8859/1"...); "UTF-8" for an
// empty value; nullopt when unknown.
std::optional<std::string> iconv_charset(std::string_view msh18);

}  // namespace yilian::mappers::hl7v2
