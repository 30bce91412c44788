#include "yilian/mappers/hl7v2.hpp"

#include <iconv.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

namespace yilian::mappers::hl7v2 {
namespace {

constexpr std::string_view replacement_character = "\xEF\xBF\xBD";  // U+FFFD

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v' || c == '\0';
}

std::string_view trim_spaces(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Drops MLLP framing (0x0B start, 0x1C end), a UTF-8 byte order mark and whitespace at both ends.
std::string_view trim_frame(std::string_view s) {
  for (;;) {
    if (!s.empty() && (s.front() == '\x0b' || s.front() == '\x1c' || is_space(s.front())))
      s.remove_prefix(1);
    else if (s.starts_with("\xEF\xBB\xBF"))
      s.remove_prefix(3);
    else
      break;
  }
  while (!s.empty() && (s.back() == '\x1c' || s.back() == '\x0b' || is_space(s.back()))) s.remove_suffix(1);
  return s;
}

// Length of the well-formed UTF-8 sequence starting at s[i]; 0 when there is none.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return 1;
  std::size_t length;
  if ((lead & 0xE0) == 0xC0)
    length = 2;
  else if ((lead & 0xF0) == 0xE0)
    length = 3;
  else if ((lead & 0xF8) == 0xF0)
    length = 4;
  else
    return 0;
  if (s.size() - i < length) return 0;
  std::uint32_t code_point = lead & (0x7Fu >> length);
  for (std::size_t k = 1; k < length; ++k) {
    const auto trail = static_cast<unsigned char>(s[i + k]);
    if ((trail & 0xC0) != 0x80) return 0;
    code_point = (code_point << 6) | (trail & 0x3Fu);
  }
  const bool overlong = (length == 2 && code_point < 0x80) || (length == 3 && code_point < 0x800) ||
                        (length == 4 && code_point < 0x10000);
  if (overlong || code_point > 0x10FFFF || (code_point >= 0xD800 && code_point <= 0xDFFF)) return 0;
  return length;
}

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const std::size_t length = utf8_sequence_length(s, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

// Appends `s` with each ill-formed byte replaced by U+FFFD; the offsets (in `out`) of the
// replacements go to `bad_offsets`.
void repair_utf8(std::string_view s, std::string& out, std::vector<std::size_t>& bad_offsets) {
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t length = utf8_sequence_length(s, i);
    if (length == 0) {
      bad_offsets.push_back(out.size());
      out += replacement_character;
      ++i;
    } else {
      out.append(s.substr(i, length));
      i += length;
    }
  }
}

// One iconv conversion direction, closed on destruction.
class converter {
 public:
  converter(const char* to, const char* from) : handle_(iconv_open(to, from)), from_utf8_(std::strcmp(from, "UTF-8") == 0) {}
  ~converter() {
    if (valid()) iconv_close(handle_);
  }
  converter(const converter&) = delete;
  converter& operator=(const converter&) = delete;

  bool valid() const { return handle_ != reinterpret_cast<iconv_t>(-1); }

  // Appends all of `in` converted. What cannot be converted (an ill-formed byte, or a character
  // the target lacks) becomes `substitute`, its offset in `out` recorded in `bad_offsets`.
  void convert(std::string_view in, std::string& out, std::string_view substitute,
               std::vector<std::size_t>* bad_offsets) {
    iconv(handle_, nullptr, nullptr, nullptr, nullptr);
    char* source = const_cast<char*>(in.data());
    std::size_t source_left = in.size();
    char buffer[4096];
    while (source_left > 0) {
      char* target = buffer;
      std::size_t room = sizeof buffer;
      const std::size_t result = iconv(handle_, &source, &source_left, &target, &room);
      out.append(buffer, static_cast<std::size_t>(target - buffer));
      if (result != static_cast<std::size_t>(-1) || errno == E2BIG) continue;
      // EILSEQ or EINVAL (a sequence cut at the end): substitute and step over it.
      if (bad_offsets) bad_offsets->push_back(out.size());
      out += substitute;
      std::size_t skip = 1;
      if (from_utf8_) {
        const std::string_view rest(source, source_left);
        skip = std::max<std::size_t>(1, utf8_sequence_length(rest, 0));
      }
      skip = std::min(skip, source_left);
      source += skip;
      source_left -= skip;
      iconv(handle_, nullptr, nullptr, nullptr, nullptr);
    }
    char* target = buffer;
    std::size_t room = sizeof buffer;
    iconv(handle_, nullptr, nullptr, &target, &room);
    out.append(buffer, static_cast<std::size_t>(target - buffer));
  }

 private:
  iconv_t handle_;
  bool from_utf8_;
};

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Calls `each(piece, index)` for the pieces of `s` between `separator`s (all of `s` when the
// separator is unused, 0); stops early when `each` returns false.
template <class F>
bool split(std::string_view s, char separator, F&& each) {
  if (separator == 0) return each(s, std::size_t{0});
  std::size_t start = 0;
  for (std::size_t index = 0;; ++index) {
    const std::size_t end = s.find(separator, start);
    if (!each(s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start), index))
      return false;
    if (end == std::string_view::npos) return true;
    start = end + 1;
  }
}

field leaf_field(std::string text) {
  field f;
  f.repetitions.emplace_back().components.emplace_back().subcomponents.push_back(std::move(text));
  return f;
}

bool supported_version(std::string_view v) {
  for (std::string_view known : {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"})
    if (v == known) return true;
  return false;
}

class parser {
 public:
  parser(const parse_options& options, parse_result& result) : options_(options), result_(result) {}

  void run(std::string_view bytes) {
    if (bytes.size() > options_.max_bytes) {
      report({"MSH"}, error_code::value_too_long,
             "message of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                 std::to_string(options_.max_bytes));
      return;
    }
    bytes = trim_frame(bytes);
    if (bytes.size() < 4 || bytes.substr(0, 3) != "MSH") {
      report({"MSH"}, error_code::segment_sequence, "the message does not start with an MSH segment");
      return;
    }
    if (!read_delimiters(bytes)) return;
    message m;
    m.separators = d_;
    choose_charset(bytes, m);

    std::size_t position = 0;
    std::size_t line_number = 0;
    while (position < bytes.size() && !stopped_) {
      std::size_t end = position;
      while (end < bytes.size() && bytes[end] != '\r' && bytes[end] != '\n') ++end;
      const std::string_view line = bytes.substr(position, end - position);
      position = end + 1;
      if (trim_spaces(line).empty()) continue;
      if (!spend([] { return location{"MSH"}; })) break;
      read_segment(line, ++line_number, m);
    }
    check_header(m);
    result_.parsed = std::move(m);
  }

 private:
  void report(location where, error_code code, std::string text, bool warning = false) {
    result_.problems.push_back({std::move(where), code, std::move(text), warning});
  }

  bool read_delimiters(std::string_view bytes) {
    d_.field = bytes[3];
    std::size_t end = 4;
    while (end < bytes.size() && bytes[end] != d_.field && bytes[end] != '\r' && bytes[end] != '\n') ++end;
    const std::string_view encoding = bytes.substr(4, end - 4);
    char* slots[] = {&d_.component, &d_.repetition, &d_.escape, &d_.subcomponent, &d_.truncation};
    for (std::size_t i = 0; i < 5; ++i) *slots[i] = i < encoding.size() ? encoding[i] : 0;
    if (encoding.size() > 5)
      report({"MSH", 1, 2}, error_code::value_too_long,
             "MSH-2 has " + std::to_string(encoding.size()) + " encoding characters; at most 5 are defined");
    else if (encoding.size() < 4)
      report({"MSH", 1, 2}, error_code::required_field_missing,
             "MSH-2 has " + std::to_string(encoding.size()) +
                 " encoding characters; the delimiters it does not name are not used",
             true);
    const char all[] = {d_.field, d_.component, d_.repetition, d_.escape, d_.subcomponent, d_.truncation};
    for (std::size_t i = 0; i < std::size(all); ++i) {
      if (all[i] == 0 && i > 0) continue;
      const bool unusable = all[i] == '\r' || all[i] == '\n' || all[i] == 0 || static_cast<unsigned char>(all[i]) >= 0x80;
      bool repeated = false;
      for (std::size_t j = 0; j < i; ++j) repeated = repeated || all[j] == all[i];
      if (unusable || repeated) {
        report({"MSH", 1, i == 0 ? 1 : 2}, error_code::data_type,
               i == 0 ? "MSH-1 is not a usable field separator"
                      : "MSH-2 encoding character " + std::to_string(i) + " is unusable or repeats another delimiter");
        return false;
      }
    }
    return true;
  }

  // MSH-18 decides (its first repetition and component), parse_options::default_charset when empty.
  void choose_charset(std::string_view bytes, message& m) {
    std::size_t end = 0;
    while (end < bytes.size() && bytes[end] != '\r' && bytes[end] != '\n') ++end;
    std::string_view declared;
    split(bytes.substr(0, end), d_.field, [&](std::string_view piece, std::size_t index) {
      if (index != 17) return true;  // piece 0 is "MSH", piece k is MSH-(k+1)
      split(piece, d_.repetition, [&](std::string_view first, std::size_t) {
        split(first, d_.component, [&](std::string_view value, std::size_t) {
          declared = trim_spaces(value);
          return false;
        });
        return false;
      });
      return false;
    });
    m.charset = std::string(declared);
    charset_name_ = declared.empty() ? options_.default_charset : std::string(declared);
    std::optional<std::string> name = iconv_charset(charset_name_);
    if (!name) {
      report({"MSH", 1, 18}, error_code::table_value_not_found,
             "unknown character set \"" + charset_name_ + "\" (HL7 table 0211); read as UTF-8");
      charset_name_ = "UTF-8";
      return;
    }
    if (*name == "UTF-8") return;
    from_charset_.emplace("UTF-8", name->c_str());
    if (!from_charset_->valid()) {
      from_charset_.reset();
      report({"MSH", 1, 18}, error_code::table_value_not_found,
             "character set \"" + charset_name_ + "\" is not available here; read as UTF-8");
    }
  }

  void read_segment(std::string_view raw, std::size_t line_number, message& m) {
    converted_.clear();
    bad_offsets_.clear();
    std::string_view text = raw;
    if (from_charset_) {
      from_charset_->convert(raw, converted_, replacement_character, &bad_offsets_);
      text = converted_;
    } else if (!valid_utf8(raw)) {
      repair_utf8(raw, converted_, bad_offsets_);
      text = converted_;
    }

    const bool header = line_number == 1;
    // The header's id is "MSH" by construction, even when the field separator is one of its letters.
    const std::string_view id = header ? text.substr(0, 3) : text.substr(0, text.find(d_.field));
    bool well_formed = id.size() == 3;
    for (char c : id) well_formed = well_formed && ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'));
    if (!well_formed) {
      std::string shown;
      for (char c : id.substr(0, 16)) shown += (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) ? '?' : c;
      report({shown}, error_code::segment_sequence,
             "segment " + std::to_string(line_number) + " \"" + shown +
                 "\": a segment id is three upper-case letters or digits; segment skipped");
      return;
    }
    if (!header && id == "MSH") {
      report({"MSH", 2}, error_code::segment_sequence,
             "segment " + std::to_string(line_number) + ": a second MSH (one message per parse); segment skipped");
      return;
    }

    segment seg;
    seg.id = std::string(id);
    std::size_t start = id.size();  // at the field separator before field 1 (or the end)
    int number = 1;
    if (header) {
      const std::size_t encoding_end = std::min(text.find(d_.field, 4), text.size());
      seg.fields.push_back(leaf_field(std::string(1, d_.field)));
      seg.fields.push_back(leaf_field(std::string(text.substr(4, encoding_end - 4))));
      start = encoding_end;
      number = 3;
    }
    occurrence_ = 0;
    while (start < text.size() && spend([&] { return location{seg.id, occurrence(seg.id, m), number}; })) {
      const std::size_t next = std::min(text.find(d_.field, start + 1), text.size());
      seg.fields.push_back(read_field(text.substr(start + 1, next - start - 1), seg.id, number, m));
      start = next;
      ++number;
    }
    for (std::size_t offset : bad_offsets_) {
      location where = locate(text, offset, seg.id, header);
      where.occurrence = occurrence(seg.id, m);
      report(std::move(where), error_code::data_type,
             "invalid byte sequence for character set " + (charset_name_.empty() ? std::string("UTF-8") : charset_name_) +
                 "; replaced by U+FFFD");
    }
    m.segments.push_back(std::move(seg));
  }

  // Counts one more element (segment, field, repetition or leaf) against parse_options::max_values;
  // false, with one problem, once the budget is spent: memory stays bounded whatever the input.
  // `where` makes the location, only when needed.
  template <class Where>
  bool spend(Where&& where) {
    if (stopped_) return false;
    if (++values_ <= options_.max_values) return true;
    report(where(), error_code::value_too_long,
           "more than " + std::to_string(options_.max_values) + " values; the rest of the message is not read");
    stopped_ = true;
    return false;
  }

  field read_field(std::string_view raw, const std::string& id, int number, const message& m) {
    field f;
    if (raw.empty()) return f;
    split(raw, d_.repetition, [&](std::string_view rep_text, std::size_t rep_index) {
      if (!spend([&] { return location{id, occurrence(id, m), number}; })) return false;
      repetition& rep = f.repetitions.emplace_back();
      if (rep_text == "\"\"") {
        rep.null = true;
        return true;
      }
      return split(rep_text, d_.component, [&](std::string_view component_text, std::size_t component_index) {
        component& comp = rep.components.emplace_back();
        return split(component_text, d_.subcomponent, [&](std::string_view leaf, std::size_t sub_index) {
          if (!spend([&] { return location{id, occurrence(id, m), number}; })) return false;
          std::string& value = comp.subcomponents.emplace_back();
          if (!decode(leaf, value))
            report({id, occurrence(id, m), number, static_cast<int>(rep_index + 1), static_cast<int>(component_index + 1),
                    sub_index > 0 ? static_cast<int>(sub_index + 1) : 0},
                   error_code::data_type, "\\X..\\ escape holds bytes that are not valid in the message's character set");
          return true;
        });
      });
    });
    return f;
  }

  // Resolves escape sequences of one leaf into `out`; false when a \X..\ escape held bytes the
  // charset cannot decode (they become U+FFFD). Unknown escapes are kept as sent.
  bool decode(std::string_view raw, std::string& out) {
    if (d_.escape == 0 || raw.find(d_.escape) == std::string_view::npos) {
      out.assign(raw);
      return true;
    }
    bool clean = true;
    std::size_t i = 0;
    while (i < raw.size()) {
      if (raw[i] != d_.escape) {
        out += raw[i++];
        continue;
      }
      const std::size_t close = raw.find(d_.escape, i + 1);
      if (close == std::string_view::npos) {
        out.append(raw.substr(i));
        break;
      }
      const std::string_view sequence = raw.substr(i + 1, close - i - 1);
      if (!resolve_escape(sequence, out, clean)) out.append(raw.substr(i, close - i + 1));
      i = close + 1;
    }
    return clean;
  }

  bool resolve_escape(std::string_view sequence, std::string& out, bool& clean) {
    if (sequence.size() == 1) {
      switch (sequence[0]) {
        case 'F': out += d_.field; return true;
        case 'S': return append_delimiter(d_.component, out);
        case 'T': return append_delimiter(d_.subcomponent, out);
        case 'R': return append_delimiter(d_.repetition, out);
        case 'E': return append_delimiter(d_.escape, out);
        case 'P': return append_delimiter(d_.truncation, out);
        case 'H':
        case 'N': return true;  // highlighting on/off: presentation only
        default: return false;
      }
    }
    if (sequence == ".br") {
      out += '\n';
      return true;
    }
    if (sequence.size() < 3 || sequence[0] != 'X' || (sequence.size() - 1) % 2 != 0) return false;
    std::string bytes;
    for (std::size_t k = 1; k + 1 < sequence.size(); k += 2) {
      const int high = hex_digit(sequence[k]), low = hex_digit(sequence[k + 1]);
      if (high < 0 || low < 0) return false;
      bytes += static_cast<char>(high * 16 + low);
    }
    std::vector<std::size_t> bad;
    if (from_charset_)
      from_charset_->convert(bytes, out, replacement_character, &bad);
    else if (valid_utf8(bytes))
      out += bytes;
    else
      repair_utf8(bytes, out, bad);
    clean = clean && bad.empty();
    return true;
  }

  static bool append_delimiter(char delimiter, std::string& out) {
    if (delimiter == 0) return false;  // not in use: the escape stays as sent
    out += delimiter;
    return true;
  }

  // The location of byte `offset` of a segment's text, by counting delimiters before it.
  location locate(std::string_view text, std::size_t offset, const std::string& id, bool header) const {
    location where{id};
    int field_number = 0, rep = 1, comp = 1, sub = 1;
    for (std::size_t i = id.size(); i < offset && i < text.size(); ++i) {
      const char c = text[i];
      if (c == d_.field) {
        ++field_number, rep = comp = sub = 1;
      } else if (header && field_number == 1) {
        continue;  // MSH-2 holds the encoding characters themselves
      } else if (c == d_.repetition && d_.repetition != 0) {
        ++rep, comp = sub = 1;
      } else if (c == d_.component && d_.component != 0) {
        ++comp, sub = 1;
      } else if (c == d_.subcomponent && d_.subcomponent != 0) {
        ++sub;
      }
    }
    where.field = header ? field_number + 1 : field_number;
    where.repetition = rep;
    where.component = comp;
    where.subcomponent = sub > 1 ? sub : 0;  // named only past the first, like read_field does
    return where;
  }

  // Occurrence (1-based) of the segment being read among those with its id.
  std::size_t occurrence(const std::string& id, const message& m) {
    if (occurrence_ == 0) {
      occurrence_ = 1;
      for (const segment& s : m.segments) occurrence_ += s.id == id;
    }
    return occurrence_;
  }

  void check_header(const message& m) {
    if (m.segments.empty()) return;
    const segment& msh = m.segments.front();
    const struct {
      int number;
      const char* name;
    } required[] = {{9, "message type"}, {10, "message control id"}, {12, "version id"}};
    for (const auto& r : required)
      if (msh.value(r.number).empty())
        report({"MSH", 1, r.number}, error_code::required_field_missing,
               "MSH-" + std::to_string(r.number) + " (" + r.name + ") is required");
    const std::string version = msh.value(12);
    if (!version.empty() && !supported_version(version))
      report({"MSH", 1, 12}, error_code::unsupported_version,
             "version " + version + " is outside 2.3 to 2.8; read as if it were one of them", true);
  }

  const parse_options& options_;
  parse_result& result_;
  delimiters d_;
  std::string charset_name_;
  std::optional<converter> from_charset_;
  std::string converted_;
  std::vector<std::size_t> bad_offsets_;
  std::size_t values_ = 0;
  std::size_t occurrence_ = 0;
  bool stopped_ = false;
};

void append_escaped(std::string& out, std::string_view value, const delimiters& d) {
  for (char c : value) {
    if (c == d.field)
      out.append({d.escape, 'F', d.escape});
    else if (c == d.component && d.component != 0)
      out.append({d.escape, 'S', d.escape});
    else if (c == d.subcomponent && d.subcomponent != 0)
      out.append({d.escape, 'T', d.escape});
    else if (c == d.repetition && d.repetition != 0)
      out.append({d.escape, 'R', d.escape});
    else if (c == d.escape && d.escape != 0)
      out.append({d.escape, 'E', d.escape});
    else if (c == '\n')
      out.append({d.escape, '.', 'b', 'r', d.escape});
    else if (c == '\r')
      out.append({d.escape, 'X', '0', 'D', d.escape});
    else
      out += c;
  }
}

void append_field(std::string& out, const field& f, const delimiters& d) {
  for (std::size_t r = 0; r < f.repetitions.size(); ++r) {
    if (r > 0) out += d.repetition;
    const repetition& rep = f.repetitions[r];
    if (rep.null) {
      out += "\"\"";
      continue;
    }
    for (std::size_t c = 0; c < rep.components.size(); ++c) {
      if (c > 0) out += d.component;
      const component& comp = rep.components[c];
      for (std::size_t s = 0; s < comp.subcomponents.size(); ++s) {
        if (s > 0) out += d.subcomponent;
        append_escaped(out, comp.subcomponents[s], d);
      }
    }
  }
}

std::optional<std::size_t> parse_number(std::string_view s, std::size_t& i) {
  std::size_t value = 0, digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9' && digits < 9) value = value * 10 + static_cast<std::size_t>(s[i++] - '0'), ++digits;
  if (digits == 0 || value == 0 || (i < s.size() && s[i] >= '0' && s[i] <= '9')) return std::nullopt;
  return value;
}

}  // namespace

std::string location::text() const {
  std::string s = segment;
  if (occurrence > 1) s += "[" + std::to_string(occurrence) + "]";
  if (field <= 0) return s;
  s += "-" + std::to_string(field);
  if (repetition > 1) s += "(" + std::to_string(repetition) + ")";
  if (component > 0 || subcomponent > 0) s += "." + std::to_string(component > 0 ? component : 1);
  if (subcomponent > 0) s += "." + std::to_string(subcomponent);
  return s;
}

std::optional<location> location::parse(std::string_view notation) {
  if (notation.size() < 3) return std::nullopt;
  location where{std::string(notation.substr(0, 3))};
  for (char c : where.segment)
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) return std::nullopt;
  std::size_t i = 3;
  auto number_between = [&](char open, char close, auto& target) {
    if (i >= notation.size() || notation[i] != open) return true;
    ++i;
    const auto n = parse_number(notation, i);
    if (!n || (close != 0 && (i >= notation.size() || notation[i++] != close))) return false;
    target = static_cast<std::remove_reference_t<decltype(target)>>(*n);
    return true;
  };
  if (!number_between('[', ']', where.occurrence)) return std::nullopt;
  if (i == notation.size()) return where;
  if (notation[i] != '-' || !number_between('-', 0, where.field)) return std::nullopt;
  if (!number_between('(', ')', where.repetition) || !number_between('.', 0, where.component) ||
      !number_between('.', 0, where.subcomponent) || i != notation.size())
    return std::nullopt;
  return where;
}

const field* segment::field_at(int number) const {
  if (number < 1 || static_cast<std::size_t>(number) > fields.size()) return nullptr;
  return &fields[static_cast<std::size_t>(number) - 1];
}

std::string segment::value(int field_number, int repetition_number, int component_number, int subcomponent_number) const {
  const field* f = field_at(field_number);
  if (!f || repetition_number < 1 || component_number < 1 || subcomponent_number < 1) return {};
  if (static_cast<std::size_t>(repetition_number) > f->repetitions.size()) return {};
  const repetition& rep = f->repetitions[static_cast<std::size_t>(repetition_number) - 1];
  if (static_cast<std::size_t>(component_number) > rep.components.size()) return {};
  const component& comp = rep.components[static_cast<std::size_t>(component_number) - 1];
  if (static_cast<std::size_t>(subcomponent_number) > comp.subcomponents.size()) return {};
  return comp.subcomponents[static_cast<std::size_t>(subcomponent_number) - 1];
}

const segment* message::find(std::string_view id, std::size_t occurrence) const {
  for (const segment& s : segments)
    if (s.id == id && --occurrence == 0) return &s;
  return nullptr;
}

std::vector<const segment*> message::all(std::string_view id) const {
  std::vector<const segment*> found;
  for (const segment& s : segments)
    if (s.id == id) found.push_back(&s);
  return found;
}

std::string message::value(std::string_view path) const {
  const std::optional<location> where = location::parse(path);
  if (!where || where->field == 0) return {};
  const segment* s = find(where->segment, where->occurrence);
  if (!s) return {};
  return s->value(where->field, std::max(where->repetition, 1), std::max(where->component, 1),
                  std::max(where->subcomponent, 1));
}

bool message::is_null(std::string_view path) const {
  const std::optional<location> where = location::parse(path);
  if (!where || where->field == 0) return false;
  const segment* s = find(where->segment, where->occurrence);
  const field* f = s ? s->field_at(where->field) : nullptr;
  const auto rep = static_cast<std::size_t>(std::max(where->repetition, 1));
  return f && rep <= f->repetitions.size() && f->repetitions[rep - 1].null;
}

std::string message::message_type() const { return value("MSH-9.1"); }
std::string message::trigger_event() const { return value("MSH-9.2"); }
std::string message::control_id() const { return value("MSH-10"); }
std::string message::version() const { return value("MSH-12.1"); }
std::string message::sending_facility() const { return value("MSH-4.1"); }

bool parse_result::ok() const noexcept {
  if (!parsed) return false;
  for (const problem& p : problems)
    if (!p.is_warning) return false;
  return true;
}

std::optional<std::string> iconv_charset(std::string_view msh18) {
  std::string key;
  for (char c : msh18)
    if (c != ' ' && c != '-' && c != '_') key += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  if (key.empty()) return "UTF-8";
  // GB 2312 and GBK are subsets of GB 18030: reading them as GB 18030 also accepts what
  // senders put in beyond the declared set.
  static constexpr struct {
    std::string_view key, name;
  } table[] = {
      {"UNICODEUTF8", "UTF-8"},  {"UTF8", "UTF-8"},          {"ISOIR192", "UTF-8"},
      {"ASCII", "UTF-8"},        {"USASCII", "UTF-8"},       {"ISOIR6", "UTF-8"},  // ASCII: a subset of UTF-8
      {"GB180302000", "GB18030"}, {"GB180302005", "GB18030"}, {"GB18030", "GB18030"},
      {"GBK", "GB18030"},        {"CP936", "GB18030"},       {"GB2312", "GB18030"},
      {"GB23121980", "GB18030"}, {"EUCCN", "GB18030"},       {"CNS116431992", "EUC-TW"},
      {"EUCTW", "EUC-TW"},       {"BIG5", "BIG5"},           {"BIG5HKSCS", "BIG5-HKSCS"},
      {"KSX1001", "EUC-KR"},     {"EUCKR", "EUC-KR"},        {"ISOIR149", "EUC-KR"},
      {"ISOIR100", "ISO-8859-1"}, {"LATIN1", "ISO-8859-1"},
  };
  for (const auto& entry : table)
    if (key == entry.key) return std::string(entry.name);
  // "8859/1" ... "8859/15" (table 0211) and "ISO-8859-1" spellings.
  for (std::string_view prefix : {"8859/", "ISO8859"}) {
    if (!key.starts_with(prefix)) continue;
    const std::string_view part = std::string_view(key).substr(prefix.size());
    std::size_t i = 0;
    const auto n = parse_number(part, i);
    if (n && i == part.size() && *n <= 16 && *n != 12) return "ISO-8859-" + std::to_string(*n);
  }
  return std::nullopt;
}

parse_result parse(std::string_view bytes, const parse_options& options) {
  parse_result result;
  parser(options, result).run(bytes);
  return result;
}

std::string encode(const message& m) {
  const delimiters& d = m.separators;
  std::string out;
  for (std::size_t i = 0; i < m.segments.size(); ++i) {
    const segment& s = m.segments[i];
    out += s.id;
    std::size_t first = 0;
    if (i == 0 && s.id == "MSH") {
      out += d.field;
      for (char c : {d.component, d.repetition, d.escape, d.subcomponent, d.truncation}) {
        if (c == 0) break;
        out += c;
      }
      first = 2;
    }
    for (std::size_t f = first; f < s.fields.size(); ++f) {
      out += d.field;
      append_field(out, s.fields[f], d);
    }
    out += '\r';
  }
  const segment* msh = m.find("MSH");
  const std::optional<std::string> target = iconv_charset(msh ? msh->value(18) : m.charset);
  if (!target || *target == "UTF-8") return out;
  converter to_charset(target->c_str(), "UTF-8");
  if (!to_charset.valid()) return out;
  std::string converted;
  to_charset.convert(out, converted, "?", nullptr);
  return converted;
}

}  // namespace yilian::mappers::hl7v2
