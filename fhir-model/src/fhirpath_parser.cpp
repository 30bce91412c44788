// FHIRPath lexer and recursive-descent parser (grammar of http://hl7.org/fhirpath/N1/grammar.html).
#include <cctype>
#include <cstring>

#include "fhirpath_internal.hpp"

namespace yilian::fhir::fhirpath::detail {
namespace {

enum class tok : std::uint8_t { end, identifier, delimited_identifier, string, number, date_time, time, variable, special, op };

struct token {
  tok kind = tok::end;
  std::string text;  // identifier/string contents (unescaped), number text, operator spelling
  std::size_t pos = 0;
};

bool ident_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
bool digit(char c) { return c >= '0' && c <= '9'; }

void append_utf8(std::string& out, unsigned cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class lexer {
 public:
  explicit lexer(std::string_view text) : s_(text) {}

  std::vector<token> run() {
    std::vector<token> out;
    for (;;) {
      skip_space();
      token t;
      t.pos = i_;
      if (i_ >= s_.size()) {
        out.push_back(t);
        return out;
      }
      char c = s_[i_];
      if (ident_start(c)) {
        std::size_t b = i_;
        while (i_ < s_.size() && ident_char(s_[i_])) ++i_;
        t.kind = tok::identifier;
        t.text = std::string(s_.substr(b, i_ - b));
      } else if (c == '`') {
        t.kind = tok::delimited_identifier;
        t.text = quoted('`');
      } else if (c == '\'') {
        t.kind = tok::string;
        t.text = quoted('\'');
      } else if (digit(c)) {
        std::size_t b = i_;
        while (i_ < s_.size() && digit(s_[i_])) ++i_;
        if (i_ + 1 < s_.size() && s_[i_] == '.' && digit(s_[i_ + 1])) {
          ++i_;
          while (i_ < s_.size() && digit(s_[i_])) ++i_;
        }
        t.kind = tok::number;
        t.text = std::string(s_.substr(b, i_ - b));
      } else if (c == '@') {
        date_literal(t);
      } else if (c == '%') {
        ++i_;
        t.kind = tok::variable;
        if (i_ < s_.size() && s_[i_] == '`') {
          t.text = quoted('`');
        } else if (i_ < s_.size() && s_[i_] == '\'') {
          t.text = quoted('\'');
        } else if (i_ < s_.size() && ident_start(s_[i_])) {
          std::size_t b = i_;
          while (i_ < s_.size() && (ident_char(s_[i_]) || s_[i_] == '-')) ++i_;
          t.text = std::string(s_.substr(b, i_ - b));
        } else {
          throw syntax_error("expected a variable name after '%'", t.pos);
        }
      } else if (c == '$') {
        ++i_;
        std::size_t b = i_;
        while (i_ < s_.size() && ident_char(s_[i_])) ++i_;
        t.kind = tok::special;
        t.text = std::string(s_.substr(b, i_ - b));
        if (t.text != "this" && t.text != "index" && t.text != "total")
          throw syntax_error("unknown special variable '$" + t.text + "'", t.pos);
      } else {
        static const char* const two[] = {"<=", ">=", "!=", "!~"};
        t.kind = tok::op;
        for (const char* op : two) {
          if (s_.substr(i_, 2) == op) {
            t.text = op;
            i_ += 2;
            break;
          }
        }
        if (t.text.empty()) {
          if (std::strchr("=~<>|+-*/&()[]{},.", c) == nullptr)
            throw syntax_error(std::string("unexpected character '") + c + "'", t.pos);
          t.text = std::string(1, c);
          ++i_;
        }
      }
      out.push_back(std::move(t));
    }
  }

 private:
  void skip_space() {
    for (;;) {
      while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
      if (s_.substr(i_, 2) == "//") {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else if (s_.substr(i_, 2) == "/*") {
        std::size_t end = s_.find("*/", i_ + 2);
        if (end == std::string_view::npos) throw syntax_error("unterminated comment", i_);
        i_ = end + 2;
      } else {
        return;
      }
    }
  }

  std::string quoted(char q) {
    std::size_t start = i_;
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != q) {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) throw syntax_error("bad \\u escape", i_ - 2);
          unsigned cp = 0;
          for (int k = 0; k < 4; ++k) {
            char h = s_[i_++];
            cp <<= 4;
            if (digit(h)) cp |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= static_cast<unsigned>(h - 'A' + 10);
            else throw syntax_error("bad \\u escape", i_ - 1);
          }
          append_utf8(out, cp);
          break;
        }
        default: out += e;  // \\ \/ \' \" \`
      }
    }
    if (i_ >= s_.size()) throw syntax_error(std::string("unterminated ") + (q == '`' ? "identifier" : "string"), start);
    ++i_;
    return out;
  }

  void digits(std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
      if (i_ >= s_.size() || !digit(s_[i_])) throw syntax_error("malformed date/time literal", i_);
      ++i_;
    }
  }

  void time_part() {
    digits(2);
    if (i_ + 1 < s_.size() && s_[i_] == ':' && digit(s_[i_ + 1])) {
      ++i_;
      digits(2);
      if (i_ + 1 < s_.size() && s_[i_] == ':' && digit(s_[i_ + 1])) {
        ++i_;
        digits(2);
        if (i_ + 1 < s_.size() && s_[i_] == '.' && digit(s_[i_ + 1])) {
          ++i_;
          while (i_ < s_.size() && digit(s_[i_])) ++i_;
        }
      }
    }
  }

  void date_literal(token& t) {
    std::size_t b = ++i_;
    if (i_ < s_.size() && s_[i_] == 'T') {
      ++i_;
      time_part();
      t.kind = tok::time;
      t.text = std::string(s_.substr(b + 1, i_ - b - 1));
      return;
    }
    digits(4);
    t.kind = tok::date_time;
    if (i_ + 1 < s_.size() && s_[i_] == '-' && digit(s_[i_ + 1])) {
      ++i_;
      digits(2);
      if (i_ + 1 < s_.size() && s_[i_] == '-' && digit(s_[i_ + 1])) {
        ++i_;
        digits(2);
      }
    }
    if (i_ < s_.size() && s_[i_] == 'T') {
      ++i_;
      if (i_ < s_.size() && digit(s_[i_])) {
        time_part();
        if (i_ < s_.size() && s_[i_] == 'Z') {
          ++i_;
        } else if (i_ + 1 < s_.size() && (s_[i_] == '+' || s_[i_] == '-') && digit(s_[i_ + 1])) {
          ++i_;
          digits(2);
          if (i_ >= s_.size() || s_[i_] != ':') throw syntax_error("malformed time zone", i_);
          ++i_;
          digits(2);
        }
      }
      t.text = std::string(s_.substr(b, i_ - b));  // keeps the 'T' (DateTime)
      t.text.insert(0, "T:");                       // marker: DateTime
      return;
    }
    t.text = std::string(s_.substr(b, i_ - b));
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

const function_info functions[] = {
    {"empty", 0, 0},         {"exists", 0, 1},        {"all", 1, 1},           {"allTrue", 0, 0},
    {"anyTrue", 0, 0},       {"allFalse", 0, 0},      {"anyFalse", 0, 0},      {"subsetOf", 1, 1},
    {"supersetOf", 1, 1},    {"count", 0, 0},         {"distinct", 0, 0},      {"isDistinct", 0, 0},
    {"where", 1, 1},         {"select", 1, 1},        {"repeat", 1, 1},        {"ofType", 1, 1},
    {"single", 0, 0},        {"first", 0, 0},         {"last", 0, 0},          {"tail", 0, 0},
    {"skip", 1, 1},          {"take", 1, 1},          {"intersect", 1, 1},     {"exclude", 1, 1},
    {"union", 1, 1},         {"combine", 1, 1},       {"iif", 2, 3},           {"toBoolean", 0, 0},
    {"convertsToBoolean", 0, 0}, {"toInteger", 0, 0}, {"convertsToInteger", 0, 0}, {"toDecimal", 0, 0},
    {"convertsToDecimal", 0, 0}, {"toString", 0, 0},  {"convertsToString", 0, 0}, {"toDate", 0, 0},
    {"convertsToDate", 0, 0},    {"toDateTime", 0, 0}, {"convertsToDateTime", 0, 0}, {"toTime", 0, 0},
    {"convertsToTime", 0, 0},    {"toQuantity", 0, 1}, {"convertsToQuantity", 0, 1}, {"indexOf", 1, 1},
    {"substring", 1, 2},     {"startsWith", 1, 1},    {"endsWith", 1, 1},      {"contains", 1, 1},
    {"upper", 0, 0},         {"lower", 0, 0},         {"replace", 2, 2},       {"matches", 1, 1},
    {"replaceMatches", 2, 2}, {"length", 0, 0},       {"toChars", 0, 0},       {"abs", 0, 0},
    {"ceiling", 0, 0},       {"exp", 0, 0},           {"floor", 0, 0},         {"ln", 0, 0},
    {"log", 1, 1},           {"power", 1, 1},         {"round", 0, 1},         {"sqrt", 0, 0},
    {"truncate", 0, 0},      {"children", 0, 0},      {"descendants", 0, 0},   {"trace", 1, 2},
    {"now", 0, 0},           {"today", 0, 0},         {"timeOfDay", 0, 0},     {"not", 0, 0},
    {"is", 1, 1},            {"as", 1, 1},            {"type", 0, 0},          {"aggregate", 1, 2},
    {"extension", 1, 1},     {"hasValue", 0, 0},      {"getValue", 0, 0},      {"resolve", 0, 0},
    {"memberOf", 1, 1},      {"conformsTo", 1, 1},    {"elementDefinition", 0, 0}, {"slice", 2, 2},
    {"checkModifiers", 1, 1}, {"htmlChecks", 0, 0},   {"matchesFull", 1, 1},   {"trim", 0, 0},
    {"split", 1, 1},         {"join", 0, 1},          {"encode", 1, 1},        {"decode", 1, 1},
    {"escape", 1, 1},        {"unescape", 1, 1},      {"sort", 0, 16},         {"precision", 0, 0},
    {"lowBoundary", 0, 1},   {"highBoundary", 0, 1},  {"comparable", 1, 1},
};

class parser {
 public:
  explicit parser(std::vector<token> tokens) : t_(std::move(tokens)) {}

  std::unique_ptr<ast> parse_all() {
    if (peek().kind == tok::end) throw syntax_error("empty expression", 0);
    auto e = expression(0);
    if (peek().kind != tok::end) throw syntax_error("unexpected '" + peek().text + "'", peek().pos);
    return e;
  }

 private:
  const token& peek(std::size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  const token& next() { return t_[std::min(p_++, t_.size() - 1)]; }
  bool is_op(const token& t, const char* s) const { return t.kind == tok::op && t.text == s; }
  bool is_word(const token& t, const char* s) const { return t.kind == tok::identifier && t.text == s; }
  void expect_op(const char* s) {
    if (!is_op(peek(), s)) {
      throw syntax_error(std::string("expected '") + s + "'" +
                             (peek().kind == tok::end ? std::string(" at end of expression") : ", found '" + peek().text + "'"),
                         peek().pos);
    }
    ++p_;
  }

  // Binary operator at the current token: precedence (higher binds tighter) or -1.
  int binary_precedence(binary_op& op) const {
    const token& t = peek();
    if (t.kind == tok::op) {
      const std::string& s = t.text;
      if (s == "*") { op = binary_op::mul; return 10; }
      if (s == "/") { op = binary_op::div; return 10; }
      if (s == "+") { op = binary_op::add; return 9; }
      if (s == "-") { op = binary_op::sub; return 9; }
      if (s == "&") { op = binary_op::concat; return 9; }
      if (s == "|") { op = binary_op::union_; return 7; }
      if (s == "<") { op = binary_op::lt; return 6; }
      if (s == ">") { op = binary_op::gt; return 6; }
      if (s == "<=") { op = binary_op::le; return 6; }
      if (s == ">=") { op = binary_op::ge; return 6; }
      if (s == "=") { op = binary_op::eq; return 5; }
      if (s == "~") { op = binary_op::equiv; return 5; }
      if (s == "!=") { op = binary_op::ne; return 5; }
      if (s == "!~") { op = binary_op::nequiv; return 5; }
      return -1;
    }
    if (t.kind != tok::identifier) return -1;
    const std::string& s = t.text;
    if (s == "div") { op = binary_op::int_div; return 10; }
    if (s == "mod") { op = binary_op::mod; return 10; }
    if (s == "is" || s == "as") return 8;  // handled specially
    if (s == "in") { op = binary_op::in; return 4; }
    if (s == "contains") { op = binary_op::contains; return 4; }
    if (s == "and") { op = binary_op::and_; return 3; }
    if (s == "or") { op = binary_op::or_; return 2; }
    if (s == "xor") { op = binary_op::xor_; return 2; }
    if (s == "implies") { op = binary_op::implies; return 1; }
    return -1;
  }

  // Nesting limit: expressions may come from outside (profiles, _filter); the parser and the
  // evaluator recurse per level.
  static constexpr int max_depth = 200;

  struct depth_guard {
    int& depth;
    depth_guard(int& d, std::size_t pos) : depth(d) {
      if (++depth > max_depth) throw syntax_error("expression nested too deeply", pos);
    }
    ~depth_guard() { --depth; }
  };

  std::unique_ptr<ast> expression(int min_prec) {
    depth_guard guard(depth_, peek().pos);
    auto lhs = unary();
    for (;;) {
      binary_op op{};
      int prec = binary_precedence(op);
      if (prec < 0 || prec < min_prec) return lhs;
      const token& t = next();
      if (t.kind == tok::identifier && (t.text == "is" || t.text == "as")) {
        auto n = std::make_unique<ast>();
        n->kind = t.text == "is" ? node_kind::is_type : node_kind::as_type;
        n->position = t.pos;
        type_specifier(*n);
        n->input = std::move(lhs);
        lhs = std::move(n);
        continue;
      }
      count_step(t.pos);
      auto rhs = expression(prec + 1);  // all binary operators are left-associative
      auto n = std::make_unique<ast>();
      n->kind = node_kind::binary;
      n->op = op;
      n->position = t.pos;
      n->args.push_back(std::move(lhs));
      n->args.push_back(std::move(rhs));
      lhs = std::move(n);
    }
  }

  void type_specifier(ast& n) {
    const token& a = next();
    if (a.kind != tok::identifier && a.kind != tok::delimited_identifier)
      throw syntax_error("expected a type name", a.pos);
    n.type_name = a.text;
    if (is_op(peek(), ".") && (peek(1).kind == tok::identifier || peek(1).kind == tok::delimited_identifier)) {
      ++p_;
      n.type_namespace = n.type_name;
      n.type_name = next().text;
    }
  }

  std::unique_ptr<ast> unary() {
    depth_guard guard(depth_, peek().pos);
    const token& t = peek();
    if (is_op(t, "-") || is_op(t, "+")) {
      ++p_;
      auto n = std::make_unique<ast>();
      n->kind = t.text == "-" ? node_kind::unary_minus : node_kind::unary_plus;
      n->position = t.pos;
      n->input = unary();
      return n;
    }
    return postfix(term());
  }

  // Operator and invocation chains build left-deep trees the evaluator recurses through.
  void count_step(std::size_t pos) {
    if (++steps_ > 2000) throw syntax_error("expression too long (more than 2000 operations)", pos);
  }

  std::unique_ptr<ast> postfix(std::unique_ptr<ast> e) {
    for (;;) {
      count_step(peek().pos);
      if (is_op(peek(), ".")) {
        ++p_;
        auto n = invocation();
        n->input = std::move(e);
        e = std::move(n);
      } else if (is_op(peek(), "[")) {
        auto n = std::make_unique<ast>();
        n->kind = node_kind::indexer;
        n->position = next().pos;
        n->input = std::move(e);
        n->args.push_back(expression(0));
        expect_op("]");
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  std::unique_ptr<ast> invocation() {
    const token& t = next();
    auto n = std::make_unique<ast>();
    n->position = t.pos;
    if (t.kind == tok::special) {
      n->kind = t.text == "this" ? node_kind::this_ref : t.text == "index" ? node_kind::index_ref : node_kind::total_ref;
      return n;
    }
    if (t.kind != tok::identifier && t.kind != tok::delimited_identifier)
      throw syntax_error(t.kind == tok::end ? "expected a name at end of expression" : "expected a name, found '" + t.text + "'",
                         t.pos);
    n->name = t.text;
    if (t.kind == tok::identifier && is_op(peek(), "(")) {
      ++p_;
      n->kind = node_kind::function;
      int index = -1;
      const function_info* info = find_function(n->name, &index);
      if (!info) throw syntax_error("unknown function '" + n->name + "'", t.pos);
      n->function = index;
      bool type_arg = n->name == "is" || n->name == "as" || n->name == "ofType";
      if (!is_op(peek(), ")")) {
        for (;;) {
          if (type_arg) {
            auto ta = std::make_unique<ast>();
            ta->position = peek().pos;
            type_specifier(*ta);
            n->type_name = ta->type_name;
            n->type_namespace = ta->type_namespace;
            n->args.push_back(std::move(ta));
          } else {
            n->args.push_back(expression(0));
          }
          if (!is_op(peek(), ",")) break;
          ++p_;
        }
      }
      expect_op(")");
      int count = static_cast<int>(n->args.size());
      if (count < info->min_args || count > info->max_args) {
        throw syntax_error("function '" + n->name + "' takes " + std::to_string(info->min_args) +
                               (info->max_args != info->min_args ? " to " + std::to_string(info->max_args) : std::string()) +
                               " argument(s), not " + std::to_string(count),
                           t.pos);
      }
      if ((n->name == "matches" || n->name == "matchesFull" || n->name == "replaceMatches") &&
          n->args[0]->kind == node_kind::literal && n->args[0]->literal.kind == item_kind::string) {
        std::string pattern = regex_dotall(n->args[0]->literal.string_value);
        if (n->name == "matchesFull") pattern = "^(?:" + pattern + ")$";
        try {
          n->regex = std::make_shared<const std::regex>(pattern, std::regex::ECMAScript);
        } catch (const std::regex_error& e) {
          throw syntax_error(std::string("invalid regular expression: ") + e.what(), n->args[0]->position);
        }
      }
      return n;
    }
    n->kind = node_kind::identifier;
    return n;
  }

  std::unique_ptr<ast> literal(item v, std::size_t pos) {
    auto n = std::make_unique<ast>();
    n->kind = node_kind::literal;
    n->position = pos;
    n->literal = std::move(v);
    return n;
  }

  std::unique_ptr<ast> term() {
    const token& t = peek();
    switch (t.kind) {
      case tok::end: throw syntax_error("unexpected end of expression", t.pos);
      case tok::string: ++p_; return literal(item::make_string(t.text), t.pos);
      case tok::number: {
        ++p_;
        decimal d = *decimal::parse(t.text);
        // Quantity: number followed by a unit string or a calendar duration word.
        if (peek().kind == tok::string) return literal(item::make_quantity(d, next().text), t.pos);
        if (peek().kind == tok::identifier && is_calendar_unit(peek().text))
          return literal(item::make_quantity(d, next().text), t.pos);
        if (t.text.find('.') == std::string::npos) {
          if (t.text.size() > 18) throw syntax_error("integer literal out of range", t.pos);
          return literal(item::make_integer(std::stoll(t.text)), t.pos);
        }
        return literal(item::make_decimal(d), t.pos);
      }
      case tok::date_time: {
        ++p_;
        bool is_dt = t.text.rfind("T:", 0) == 0;
        std::string text = is_dt ? t.text.substr(2) : t.text;
        if (is_dt && text.back() == 'T') text.pop_back();
        item v;
        v.kind = is_dt ? item_kind::datetime : item_kind::date;
        auto parsed = parse_temporal(text, v.kind);
        if (!parsed) throw syntax_error("invalid date/time literal", t.pos);
        v.temporal_value = *parsed;
        return literal(std::move(v), t.pos);
      }
      case tok::time: {
        ++p_;
        item v;
        v.kind = item_kind::time;
        auto parsed = parse_temporal(t.text, v.kind);
        if (!parsed) throw syntax_error("invalid time literal", t.pos);
        v.temporal_value = *parsed;
        return literal(std::move(v), t.pos);
      }
      case tok::variable: {
        ++p_;
        auto n = std::make_unique<ast>();
        n->kind = node_kind::variable;
        n->position = t.pos;
        n->name = t.text;
        return n;
      }
      case tok::op:
        if (t.text == "(") {
          ++p_;
          auto e = expression(0);
          expect_op(")");
          return e;
        }
        if (t.text == "{") {
          ++p_;
          expect_op("}");
          auto n = std::make_unique<ast>();
          n->kind = node_kind::empty;
          n->position = t.pos;
          return n;
        }
        throw syntax_error("unexpected '" + t.text + "'", t.pos);
      case tok::identifier:
        if (t.text == "true" || t.text == "false") {
          ++p_;
          return literal(item::make_boolean(t.text == "true"), t.pos);
        }
        return invocation();
      default: return invocation();
    }
  }

  std::vector<token> t_;
  std::size_t p_ = 0;
  int depth_ = 0;
  int steps_ = 0;
};

}  // namespace

const function_info* find_function(std::string_view name, int* index) {
  for (std::size_t i = 0; i < std::size(functions); ++i) {
    if (name == functions[i].name) {
      *index = static_cast<int>(i);
      return &functions[i];
    }
  }
  return nullptr;
}

const function_info& function_at(int index) { return functions[index]; }

std::unique_ptr<ast> parse(std::string_view text) { return parser(lexer(text).run()).parse_all(); }

}  // namespace yilian::fhir::fhirpath::detail
