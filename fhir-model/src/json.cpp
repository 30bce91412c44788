// FHIR JSON <-> value tree with RapidJSON: a SAX reader builds the tree directly (numbers kept as
// their literal text), and the writer streams the tree into the caller's std::string.
#include "yilian/fhir/json.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/reader.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace yilian::fhir {
namespace {

// Deeper nesting than any FHIR resource needs; bounds the parser's recursion on hostile input.
constexpr std::size_t max_depth = 512;

// Builds the tree from SAX events. `stack_` holds the open objects/arrays (ancestors only, so the
// pointers stay valid while their later siblings are appended).
class tree_builder {
 public:
  explicit tree_builder(value& root) : root_(root) {}

  bool Null() {
    slot();
    return true;
  }
  bool Bool(bool b) {
    slot() = value::make_boolean(b);
    return true;
  }
  // Only RawNumber is called with kParseNumbersAsStringsFlag; the typed ones keep the concept whole.
  bool Int(int) { return false; }
  bool Uint(unsigned) { return false; }
  bool Int64(std::int64_t) { return false; }
  bool Uint64(std::uint64_t) { return false; }
  bool Double(double) { return false; }
  bool RawNumber(const char* str, rapidjson::SizeType length, bool) {
    value& v = slot();
    v = value(value_kind::number);
    v.set_text(std::string(str, length));
    return true;
  }
  bool String(const char* str, rapidjson::SizeType length, bool) {
    value& v = slot();
    v = value(value_kind::string);
    v.set_text(std::string(str, length));
    return true;
  }
  bool StartObject() { return open(value_kind::object); }
  bool Key(const char* str, rapidjson::SizeType length, bool) {
    stack_.back()->members().push_back(member{std::string(str, length), value()});
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    value* obj = stack_.back();
    if (const std::string* dup = find_duplicate(*obj)) {
      duplicate_key_ = *dup;
      duplicate_ = true;
      return false;
    }
    stack_.pop_back();
    return true;
  }
  bool StartArray() { return open(value_kind::array); }
  bool EndArray(rapidjson::SizeType) {
    stack_.pop_back();
    return true;
  }

  bool too_deep() const noexcept { return too_deep_; }
  bool duplicate() const noexcept { return duplicate_; }
  const std::string& duplicate_key() const noexcept { return duplicate_key_; }

  // FHIR-style location of the innermost open container ("Patient.name[1]").
  std::string location() const {
    std::string path;
    if (const value* type = root_.is_object() ? root_.find("resourceType") : nullptr; type && type->is_string())
      path = type->text();
    else
      path = "$";
    for (std::size_t i = 0; i + 1 < stack_.size(); ++i) {
      const value* parent = stack_[i];
      if (parent->is_object()) {
        if (parent->members().empty()) break;
        path += '.';
        path += parent->members().back().name;
      } else {
        path += '[' + std::to_string(parent->items().empty() ? 0 : parent->items().size() - 1) + ']';
      }
    }
    return path;
  }

 private:
  // Where the next value goes.
  value& slot() {
    if (stack_.empty()) return root_;
    value* top = stack_.back();
    if (top->is_array()) return top->push_back(value());
    return top->members().back().val;
  }

  bool open(value_kind kind) {
    if (stack_.size() >= max_depth) {
      too_deep_ = true;
      return false;
    }
    value& v = slot();
    v = value(kind);
    stack_.push_back(&v);
    return true;
  }

  static const std::string* find_duplicate(const value& obj) {
    const auto& m = obj.members();
    if (m.size() < 2) return nullptr;
    if (m.size() <= 16) {
      for (std::size_t i = 1; i < m.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
          if (m[i].name == m[j].name) return &m[i].name;
      return nullptr;
    }
    std::vector<const std::string*> names;
    names.reserve(m.size());
    for (const auto& x : m) names.push_back(&x.name);
    std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
    for (std::size_t i = 1; i < names.size(); ++i)
      if (*names[i] == *names[i - 1]) return names[i];
    return nullptr;
  }

  value& root_;
  std::vector<value*> stack_;
  bool too_deep_ = false;
  bool duplicate_ = false;
  std::string duplicate_key_;
};

// RapidJSON output stream appending to a std::string. Writer calls PutReserve before a run of
// PutUnsafe, so the hot path is a bounds-free store (found by ADL; beats rapidjson's templates).
class string_output {
 public:
  using Ch = char;
  explicit string_output(std::string& out) : out_(out), used_(out.size()) { grow(4096); }
  ~string_output() { out_.resize(static_cast<std::size_t>(cur_ - out_.data())); }
  string_output(const string_output&) = delete;
  string_output& operator=(const string_output&) = delete;

  void Put(char c) {
    reserve(1);
    *cur_++ = c;
  }
  void Flush() {}
  void reserve(std::size_t n) {
    if (static_cast<std::size_t>(end_ - cur_) < n) grow(n);
  }
  void put_unsafe(char c) { *cur_++ = c; }

 private:
  void grow(std::size_t n) {
    const std::size_t used = cur_ ? static_cast<std::size_t>(cur_ - out_.data()) : used_;
    out_.resize(std::max(out_.size() * 2, used + n + 4096));
    cur_ = out_.data() + used;
    end_ = out_.data() + out_.size();
  }

  std::string& out_;
  std::size_t used_;
  char* cur_ = nullptr;
  char* end_ = nullptr;
};

inline void PutReserve(string_output& s, std::size_t n) {
  s.reserve(n);
}
inline void PutUnsafe(string_output& s, char c) {
  s.put_unsafe(c);
}

template <typename Writer>
void write_value(const value& v, Writer& w) {
  switch (v.kind()) {
    case value_kind::null:
      w.Null();
      break;
    case value_kind::boolean:
      w.Bool(v.as_bool());
      break;
    case value_kind::number:
      w.RawValue(v.text().data(), v.text().size(), rapidjson::kNumberType);
      break;
    case value_kind::string:
      w.String(v.text().data(), static_cast<rapidjson::SizeType>(v.text().size()));
      break;
    case value_kind::raw_json:
      w.RawValue(v.text().data(), v.text().size(), rapidjson::kObjectType);
      break;
    case value_kind::object:
      w.StartObject();
      for (const member& m : v.members()) {
        w.Key(m.name.data(), static_cast<rapidjson::SizeType>(m.name.size()));
        write_value(m.val, w);
      }
      w.EndObject();
      break;
    case value_kind::array:
      w.StartArray();
      for (const value& item : v.items()) write_value(item, w);
      w.EndArray();
      break;
  }
}

}  // namespace

bool parse_json(std::string_view text, value& out, issue_list& issues) {
  out = value();
  tree_builder builder(out);
  rapidjson::MemoryStream stream(text.data(), text.size());
  rapidjson::Reader reader;
  constexpr unsigned flags = rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseValidateEncodingFlag;
  rapidjson::ParseResult result = reader.Parse<flags>(stream, builder);
  if (result.IsError()) {
    std::string where = builder.location();
    std::string message;
    if (builder.too_deep())
      message = "JSON nested deeper than " + std::to_string(max_depth) + " levels";
    else if (builder.duplicate())
      message = "duplicate key \"" + builder.duplicate_key() + "\" in a JSON object";
    else
      message = rapidjson::GetParseError_En(result.Code());
    issues.error(issue_type::structure, message + " (at byte offset " + std::to_string(result.Offset()) + ")",
                 std::move(where));
    out = value();
    return false;
  }
  // MemoryStream reads a NUL byte as the end of input: anything after the document (including a
  // stray NUL) is an error, as for any other trailing garbage.
  if (stream.Tell() != text.size()) {
    issues.error(issue_type::structure,
                 std::string(rapidjson::GetParseError_En(rapidjson::kParseErrorDocumentRootNotSingular)) +
                     " (at byte offset " + std::to_string(stream.Tell()) + ")");
    out = value();
    return false;
  }
  return true;
}

void write_json(const value& v, std::string& out, const json_write_options& options) {
  string_output stream(out);
  if (options.pretty) {
    rapidjson::PrettyWriter<string_output> writer(stream);
    writer.SetIndent(' ', 2);
    write_value(v, writer);
  } else {
    rapidjson::Writer<string_output> writer(stream);
    write_value(v, writer);
  }
}

std::string to_json(const value& v, const json_write_options& options) {
  std::string out;
  write_json(v, out, options);
  return out;
}

}  // namespace yilian::fhir
