// FHIRPath function library (http://hl7.org/fhirpath/N1/#functions and the FHIR additions).
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>

#include "fhirpath_evaluator.hpp"

namespace yilian::fhir::fhirpath::detail {

namespace {

std::optional<bool> to_boolean_value(const item& v) {
  switch (v.kind) {
    case item_kind::boolean: return v.boolean_value;
    case item_kind::integer:
      if (v.integer_value == 1) return true;
      if (v.integer_value == 0) return false;
      return std::nullopt;
    case item_kind::decimal:
      if (compare(v.decimal_value, decimal{1, 0}) == 0) return true;
      if (compare(v.decimal_value, decimal{0, 0}) == 0) return false;
      return std::nullopt;
    case item_kind::string: {
      std::string s;
      for (char c : v.string_value) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (s == "true" || s == "t" || s == "yes" || s == "y" || s == "1" || s == "1.0") return true;
      if (s == "false" || s == "f" || s == "no" || s == "n" || s == "0" || s == "0.0") return false;
      return std::nullopt;
    }
    default: return std::nullopt;
  }
}

}  // namespace

collection evaluator::convert(fn id, const collection& in) {
  if (in.empty()) return {};
  item v = to_system(single(in, "conversion"), defs_);
  auto out_or_empty = [](std::optional<item> r) { return r ? collection{*r} : collection{}; };
  std::optional<item> r;
  switch (id) {
    case fn::f_toBoolean:
    case fn::f_convertsToBoolean:
      if (auto b = to_boolean_value(v)) r = item::make_boolean(*b);
      break;
    case fn::f_toInteger:
    case fn::f_convertsToInteger:
      if (v.kind == item_kind::integer) r = v;
      else if (v.kind == item_kind::boolean) r = item::make_integer(v.boolean_value ? 1 : 0);
      else if (v.kind == item_kind::string) {
        const std::string& s = v.string_value;
        std::size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
        bool ok = i < s.size() && s.size() - i <= 18;
        for (std::size_t k = i; ok && k < s.size(); ++k) ok = std::isdigit(static_cast<unsigned char>(s[k])) != 0;
        if (ok) r = item::make_integer(std::stoll(s));
      }
      break;
    case fn::f_toDecimal:
    case fn::f_convertsToDecimal:
      if (v.kind == item_kind::decimal) r = v;
      else if (v.kind == item_kind::integer) r = item::make_decimal(decimal::from_integer(v.integer_value));
      else if (v.kind == item_kind::boolean) r = item::make_decimal(decimal{v.boolean_value ? 10 : 0, 1});
      else if (v.kind == item_kind::string && v.string_value.find_first_of("eE") == std::string::npos) {
        if (auto d = decimal::parse(v.string_value)) r = item::make_decimal(*d);
      }
      break;
    case fn::f_toString:
    case fn::f_convertsToString:
      if (auto s = v.to_string(); s && v.kind != item_kind::node) r = item::make_string(*s);
      break;
    case fn::f_toDate:
    case fn::f_convertsToDate:
      if (v.kind == item_kind::date) r = v;
      else if (v.kind == item_kind::datetime) {
        item d = v;
        d.kind = item_kind::date;
        if (d.temporal_value.prec > precision::day) d.temporal_value.prec = precision::day;
        d.temporal_value.hour = d.temporal_value.minute = d.temporal_value.second = d.temporal_value.millisecond = 0;
        d.temporal_value.has_tz = false;
        r = d;
      } else if (v.kind == item_kind::string) {
        if (auto t = parse_temporal(v.string_value, item_kind::date)) {
          item d;
          d.kind = item_kind::date;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toDateTime:
    case fn::f_convertsToDateTime:
      if (v.kind == item_kind::datetime) r = v;
      else if (v.kind == item_kind::date) {
        item d = v;
        d.kind = item_kind::datetime;
        r = d;
      } else if (v.kind == item_kind::string) {
        if (auto t = parse_temporal(v.string_value, item_kind::datetime)) {
          item d;
          d.kind = item_kind::datetime;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toTime:
    case fn::f_convertsToTime:
      if (v.kind == item_kind::time) r = v;
      else if (v.kind == item_kind::string) {
        std::string_view s = v.string_value;
        if (!s.empty() && s[0] == 'T') s.remove_prefix(1);
        if (auto t = parse_temporal(s, item_kind::time)) {
          item d;
          d.kind = item_kind::time;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toQuantity:
    case fn::f_convertsToQuantity:
      if (v.kind == item_kind::quantity) r = v;
      else if (v.kind == item_kind::integer) r = item::make_quantity(decimal::from_integer(v.integer_value), "1");
      else if (v.kind == item_kind::decimal) r = item::make_quantity(v.decimal_value, "1");
      else if (v.kind == item_kind::boolean) r = item::make_quantity(decimal{v.boolean_value ? 10 : 0, 1}, "1");
      else if (v.kind == item_kind::string) r = parse_quantity_text(v.string_value);
      break;
    default: break;
  }
  bool converts = id == fn::f_convertsToBoolean || id == fn::f_convertsToInteger || id == fn::f_convertsToDecimal ||
                  id == fn::f_convertsToString || id == fn::f_convertsToDate || id == fn::f_convertsToDateTime ||
                  id == fn::f_convertsToTime || id == fn::f_convertsToQuantity;
  if (converts) return collection{item::make_boolean(r.has_value())};
  return out_or_empty(r);
}

collection evaluator::math(fn id, const collection& in, const ast& n, const frame& f) {
  if (in.empty()) return {};
  item v = to_system(single(in, "math"), defs_);
  bool is_int = v.kind == item_kind::integer;
  if (v.kind == item_kind::quantity && id == fn::f_abs) {
    v.decimal_value.mantissa = v.decimal_value.mantissa < 0 ? -v.decimal_value.mantissa : v.decimal_value.mantissa;
    return collection{v};
  }
  if (!is_int && v.kind != item_kind::decimal) throw evaluation_error("math function needs a number, not " + v.type_name());
  decimal d = is_int ? decimal::from_integer(v.integer_value) : v.decimal_value;
  long double x = d.to_double();
  auto dec = [](long double r) -> collection {
    if (std::isnan(r) || std::isinf(r)) return {};
    return collection{item::make_decimal(decimal::from_double(r))};
  };
  switch (id) {
    case fn::f_abs:
      if (is_int) {
        if (v.integer_value == INT64_MIN) throw evaluation_error("integer overflow");
        return collection{item::make_integer(v.integer_value < 0 ? -v.integer_value : v.integer_value)};
      }
      d.mantissa = d.mantissa < 0 ? -d.mantissa : d.mantissa;
      return collection{item::make_decimal(d)};
    case fn::f_ceiling: {
      decimal r = d.rounded(0);
      if (compare(r, d) < 0) r.mantissa += 1;
      return collection{item::make_integer(static_cast<std::int64_t>(r.mantissa))};
    }
    case fn::f_floor: {
      decimal r = d.rounded(0);
      if (compare(r, d) > 0) r.mantissa -= 1;
      return collection{item::make_integer(static_cast<std::int64_t>(r.mantissa))};
    }
    case fn::f_truncate: return collection{item::make_integer(static_cast<std::int64_t>(std::trunc(x)))};
    case fn::f_exp: return dec(std::exp(x));
    case fn::f_ln: return x <= 0 ? collection{} : dec(std::log(x));
    case fn::f_sqrt: return x < 0 ? collection{} : dec(std::sqrt(x));
    case fn::f_log: {
      collection b = eval(*n.args[0], f);
      if (b.empty()) return {};
      item bv = to_system(single(b, "log"), defs_);
      long double base = bv.kind == item_kind::integer ? static_cast<long double>(bv.integer_value) : bv.decimal_value.to_double();
      if (x <= 0 || base <= 0 || base == 1) return {};
      return dec(std::log(x) / std::log(base));
    }
    case fn::f_power: {
      collection b = eval(*n.args[0], f);
      if (b.empty()) return {};
      item bv = to_system(single(b, "power"), defs_);
      if (is_int && bv.kind == item_kind::integer && bv.integer_value >= 0) {
        // Square-and-multiply: large exponents of 0, 1 or -1 must not loop for ages.
        std::int64_t r = 1, base = v.integer_value, e = bv.integer_value;
        while (e > 0) {
          if ((e & 1) && __builtin_mul_overflow(r, base, &r)) return {};
          e >>= 1;
          if (e > 0 && __builtin_mul_overflow(base, base, &base)) return {};
        }
        return collection{item::make_integer(r)};
      }
      long double e = bv.kind == item_kind::integer ? static_cast<long double>(bv.integer_value) : bv.decimal_value.to_double();
      return dec(std::pow(x, e));
    }
    case fn::f_round: {
      std::int64_t p = 0;
      if (!n.args.empty()) {
        auto a = integer_arg(*n.args[0], f);
        if (!a) return {};
        p = *a;
        if (p < 0) throw evaluation_error("round() precision must be >= 0");
      }
      return collection{item::make_decimal(d.rounded(static_cast<int>(p)))};
    }
    default: return {};
  }
}

std::string regex_dotall(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      out += c;
      out += p[++i];
      continue;
    }
    if (c == '[') in_class = true;
    else if (c == ']') in_class = false;
    if (c == '.' && !in_class) out += "[\\s\\S]";
    else out += c;
  }
  return out;
}

namespace {

std::size_t utf8_length(std::string_view s) {
  std::size_t n = 0;
  for (char c : s)
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  return n;
}

}  // namespace

namespace {

const char* const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

namespace {

std::string base64_encode(std::string_view in, bool url) {
  std::string out;
  std::size_t i = 0;
  while (i + 2 < in.size() + 2 && i < in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    if (i + 2 < in.size()) v |= static_cast<unsigned char>(in[i + 2]);
    out += b64[(v >> 18) & 63];
    out += b64[(v >> 12) & 63];
    out += i + 1 < in.size() ? b64[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? b64[v & 63] : '=';
    i += 3;
  }
  if (url)
    for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

}  // namespace

namespace {

std::optional<std::string> base64_decode(std::string_view in) {
  std::string out;
  unsigned v = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    int d;
    if (c == '-') d = 62;
    else if (c == '_') d = 63;
    else {
      const char* p = std::strchr(b64, c);
      if (!p || !c) return std::nullopt;
      d = static_cast<int>(p - b64);
    }
    v = (v << 6) | static_cast<unsigned>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xFF);
    }
  }
  return out;
}

}  // namespace

collection evaluator::strings(fn id, const collection& in, const ast& n, const frame& f) {
  const char* name = function_at(static_cast<int>(id)).name;
  auto s = input_string(in, name);
  if (!s) return {};
  auto str = [](std::string v) { return collection{item::make_string(std::move(v))}; };
  switch (id) {
    case fn::f_indexOf: {
      auto a = string_arg(*n.args[0], f);
      if (!a) return {};
      auto p = s->find(*a);
      return collection{item::make_integer(p == std::string::npos ? -1 : static_cast<std::int64_t>(p))};
    }
    case fn::f_substring: {
      auto start = integer_arg(*n.args[0], f);
      if (!start || *start < 0 || *start >= static_cast<std::int64_t>(s->size())) return {};
      std::size_t len = std::string::npos;
      if (n.args.size() > 1) {
        auto l = integer_arg(*n.args[1], f);
        if (l) len = *l < 0 ? 0 : static_cast<std::size_t>(*l);
      }
      return str(s->substr(static_cast<std::size_t>(*start), len));
    }
    case fn::f_startsWith:
    case fn::f_endsWith:
    case fn::f_contains: {
      auto a = string_arg(*n.args[0], f);
      if (!a) return {};
      bool r = id == fn::f_startsWith ? s->starts_with(*a) : id == fn::f_endsWith ? s->ends_with(*a) : s->find(*a) != std::string::npos;
      return collection{item::make_boolean(r)};
    }
    case fn::f_upper:
    case fn::f_lower: {
      std::string r = *s;
      for (char& c : r) c = static_cast<char>(id == fn::f_upper ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return str(std::move(r));
    }
    case fn::f_replace: {
      auto pat = string_arg(*n.args[0], f);
      auto rep = string_arg(*n.args[1], f);
      if (!pat || !rep) return {};
      std::string out;
      if (pat->empty()) {
        out = *rep;
        for (char c : *s) {
          out += c;
          out += *rep;
        }
        return str(std::move(out));
      }
      std::size_t pos = 0;
      for (;;) {
        std::size_t hit = s->find(*pat, pos);
        if (hit == std::string::npos) break;
        out.append(*s, pos, hit - pos);
        out += *rep;
        pos = hit + pat->size();
      }
      out.append(*s, pos);
      return str(std::move(out));
    }
    case fn::f_matches:
    case fn::f_matchesFull:
    case fn::f_replaceMatches: {
      std::shared_ptr<const std::regex> re = n.regex;
      auto pat = string_arg(*n.args[0], f);
      if (!pat) return {};
      // libstdc++'s regex engine recurses per character: bound the input it is given.
      if (s->size() > 100000) throw evaluation_error("string too long for a regular expression (over 100000 bytes)");
      std::optional<std::string> rep;
      if (id == fn::f_replaceMatches) {
        rep = string_arg(*n.args[1], f);
        if (!rep) return {};
        if (pat->empty()) return str(*s);
      }
      try {
        std::optional<std::regex> local;
        if (!re) {
          std::string p = regex_dotall(*pat);
          if (id == fn::f_matchesFull) p = "^(?:" + p + ")$";
          local.emplace(p, std::regex::ECMAScript);
        }
        const std::regex& rx = re ? *re : *local;
        if (id == fn::f_replaceMatches) return str(std::regex_replace(*s, rx, *rep));
        return collection{item::make_boolean(std::regex_search(*s, rx))};
      } catch (const std::regex_error& e) {
        throw evaluation_error(std::string("invalid regular expression: ") + e.what());
      }
    }
    case fn::f_length: return collection{item::make_integer(static_cast<std::int64_t>(utf8_length(*s)))};
    case fn::f_toChars: {
      collection out;
      for (std::size_t i = 0; i < s->size();) {
        std::size_t j = i + 1;
        while (j < s->size() && (static_cast<unsigned char>((*s)[j]) & 0xC0) == 0x80) ++j;
        out.push_back(item::make_string(s->substr(i, j - i)));
        i = j;
      }
      return out;
    }
    case fn::f_trim: {
      std::size_t b = s->find_first_not_of(" \t\r\n");
      if (b == std::string::npos) return str("");
      std::size_t e = s->find_last_not_of(" \t\r\n");
      return str(s->substr(b, e - b + 1));
    }
    case fn::f_split: {
      auto sep = string_arg(*n.args[0], f);
      if (!sep) return {};
      collection out;
      if (sep->empty()) return str(*s);
      std::size_t pos = 0;
      for (;;) {
        std::size_t hit = s->find(*sep, pos);
        if (hit == std::string::npos) {
          out.push_back(item::make_string(s->substr(pos)));
          break;
        }
        out.push_back(item::make_string(s->substr(pos, hit - pos)));
        pos = hit + sep->size();
      }
      return out;
    }
    case fn::f_encode:
    case fn::f_decode: {
      auto enc = string_arg(*n.args[0], f);
      if (!enc) return {};
      if (*enc == "base64" || *enc == "urlbase64") {
        if (id == fn::f_encode) return str(base64_encode(*s, *enc == "urlbase64"));
        auto d = base64_decode(*s);
        return d ? str(*d) : collection{};
      }
      if (*enc == "hex") {
        static const char* hex = "0123456789abcdef";
        std::string out;
        if (id == fn::f_encode) {
          for (unsigned char c : *s) {
            out += hex[c >> 4];
            out += hex[c & 15];
          }
          return str(out);
        }
        if (s->size() % 2) return {};
        auto nibble = [](char c) {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        for (std::size_t i = 0; i < s->size(); i += 2) {
          int hi = nibble((*s)[i]), lo = nibble((*s)[i + 1]);
          if (hi < 0 || lo < 0) return {};
          out += static_cast<char>(hi * 16 + lo);
        }
        return str(out);
      }
      throw evaluation_error("unknown encoding '" + *enc + "'");
    }
    case fn::f_escape:
    case fn::f_unescape: {
      auto kind = string_arg(*n.args[0], f);
      if (!kind) return {};
      std::string out;
      if (*kind == "html") {
        if (id == fn::f_escape) {
          for (char c : *s) {
            if (c == '&') out += "&amp;";
            else if (c == '<') out += "&lt;";
            else if (c == '>') out += "&gt;";
            else if (c == '"') out += "&quot;";
            else if (c == '\'') out += "&#39;";
            else out += c;
          }
        } else {
          static const std::pair<const char*, char> ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&#39;", '\''}, {"&apos;", '\''}};
          for (std::size_t i = 0; i < s->size();) {
            bool hit = false;
            for (auto& [e, c] : ents) {
              if (s->compare(i, std::strlen(e), e) == 0) {
                out += c;
                i += std::strlen(e);
                hit = true;
                break;
              }
            }
            if (!hit) out += (*s)[i++];
          }
        }
        return str(out);
      }
      if (*kind == "json") {
        if (id == fn::f_escape) {
          for (char c : *s) {
            if (c == '"') out += "\\\"";
            else if (c == '\\') out += "\\\\";
            else if (c == '\n') out += "\\n";
            else if (c == '\t') out += "\\t";
            else if (c == '\r') out += "\\r";
            else out += c;
          }
        } else {
          for (std::size_t i = 0; i < s->size(); ++i) {
            char c = (*s)[i];
            if (c == '\\' && i + 1 < s->size()) {
              char e = (*s)[++i];
              out += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            } else {
              out += c;
            }
          }
        }
        return str(out);
      }
      throw evaluation_error("unknown escape kind '" + *kind + "'");
    }
    default: return {};
  }
}

namespace {

int digits_of(precision p, item_kind k) {
  if (k == item_kind::time) {
    switch (p) {
      case precision::hour: return 2;
      case precision::minute: return 4;
      case precision::second: return 6;
      default: return 9;
    }
  }
  switch (p) {
    case precision::year: return 4;
    case precision::month: return 6;
    case precision::day: return 8;
    case precision::hour: return 10;
    case precision::minute: return 12;
    case precision::second: return 14;
    default: return 17;
  }
}

}  // namespace

collection evaluator::boundary(const collection& in, const ast& n, const frame& f, bool high) {
  if (in.empty()) return {};
  item v = to_system(single(in, high ? "highBoundary" : "lowBoundary"), defs_);
  std::optional<std::int64_t> p;
  if (!n.args.empty()) {
    p = integer_arg(*n.args[0], f);
    if (!p) return {};
  }
  if (v.kind == item_kind::integer || v.kind == item_kind::decimal || v.kind == item_kind::quantity) {
    decimal d = v.kind == item_kind::integer ? decimal::from_integer(v.integer_value) : v.decimal_value;
    std::int64_t prec = p ? *p : 8;
    if (prec < 0 || prec > 28) return {};
    // Half a unit of the last digit, one digit further.
    decimal half{d.mantissa < 0 ? -5 : 5, d.scale + 1};
    (void)half;
    decimal edge = decimal_add(d.rounded(d.scale + 1), decimal{5, d.scale + 1}, !high);
    int target = static_cast<int>(prec);
    decimal r;
    if (target >= edge.scale) {
      r = edge.rounded(target);
    } else {
      // Floor (low) or ceiling (high) at the target precision.
      decimal t = edge.rounded(target);
      int c = compare(t, edge);
      if (!high && c > 0) t.mantissa -= 1;
      if (high && c < 0) t.mantissa += 1;
      r = t;
    }
    if (v.kind == item_kind::quantity) return collection{item::make_quantity(r, v.string_value)};
    return collection{item::make_decimal(r)};
  }
  if (v.kind == item_kind::date || v.kind == item_kind::datetime || v.kind == item_kind::time) {
    temporal t = v.temporal_value;
    std::int64_t digits = p ? *p : (v.kind == item_kind::time ? 9 : v.kind == item_kind::date ? 8 : 17);
    precision target;
    item_kind kind = v.kind;
    if (v.kind == item_kind::time) {
      if (digits == 2) target = precision::hour;
      else if (digits == 4) target = precision::minute;
      else if (digits == 6) target = precision::second;
      else if (digits == 9) target = precision::millisecond;
      else return {};
    } else {
      if (digits == 4) target = precision::year;
      else if (digits == 6) target = precision::month;
      else if (digits == 8) target = precision::day;
      else if (digits == 10) target = precision::hour;
      else if (digits == 12) target = precision::minute;
      else if (digits == 14) target = precision::second;
      else if (digits == 17) target = precision::millisecond;
      else return {};
      if (v.kind == item_kind::date && target > precision::day) kind = item_kind::datetime;
    }
    auto dim = [](int y, int m) {
      static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
      bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
      return m == 2 && leap ? 29 : d[m - 1];
    };
    if (t.prec < precision::month) t.month = high ? 12 : 1;
    if (t.prec < precision::day) t.day = high ? dim(t.year, t.month ? t.month : 1) : 1;
    if (t.prec < precision::hour) t.hour = high ? 23 : 0;
    if (t.prec < precision::minute) t.minute = high ? 59 : 0;
    if (t.prec < precision::second) t.second = high ? 59 : 0;
    if (t.prec < precision::millisecond) t.millisecond = high ? 999 : 0;
    if (kind == item_kind::datetime && target >= precision::hour && !t.has_tz) {
      t.has_tz = true;
      t.tz_minutes = high ? -12 * 60 : 14 * 60;
    }
    t.prec = target;
    if (target < precision::hour) {
      t.hour = t.minute = t.second = t.millisecond = 0;
      t.has_tz = false;
      if (kind == item_kind::datetime && v.kind == item_kind::datetime) kind = item_kind::date;
    }
    if (target < precision::day) t.day = 0;
    if (target < precision::month) t.month = 0;
    item out;
    out.kind = kind;
    out.temporal_value = t;
    return collection{out};
  }
  throw evaluation_error("boundary functions need a number, quantity or date/time");
}

// A resource that is not at hand: an item with the type the reference names ("Patient/1",
// "http://x/fhir/Patient/1/_history/2") and no content, so `resolve() is Patient` works without a
// store. Nothing is returned when the reference does not name a type.
item evaluator::reference_stub(const item&, const std::string& ref) {
  std::string_view r = ref;
  if (auto q = r.find_first_of("?#"); q != std::string_view::npos) r = r.substr(0, q);
  if (auto h = r.find("/_history/"); h != std::string_view::npos) r = r.substr(0, h);
  std::vector<std::string_view> parts;
  std::size_t b = 0;
  while (b <= r.size()) {
    std::size_t e = r.find('/', b);
    if (e == std::string_view::npos) e = r.size();
    parts.push_back(r.substr(b, e - b));
    b = e + 1;
  }
  item stub;
  stub.kind = item_kind::node;
  stub.string_value = ref;
  for (std::size_t i = parts.size(); i-- > 0;) {
    if (const type_def* td = defs_.find_type(parts[i]); td && td->kind == type_kind::resource && i + 2 >= parts.size()) {
      stub.fhir_type = td->name;
      break;
    }
  }
  return stub;
}

collection evaluator::resolve(const collection& in) {
  collection out;
  for (const item& it : in) {
    std::string ref;
    if (it.kind == item_kind::string) ref = it.string_value;
    else if (it.kind == item_kind::node && it.node && it.node->is_string()) ref = it.node->text();
    else if (it.kind == item_kind::node && it.node && it.node->is_object()) {
      const value* r = it.node->find("reference");
      if (r && r->is_string()) ref = r->text();
    }
    if (ref.empty()) {
      // A Reference with only a type (and an identifier) still says what it points at.
      if (it.kind == item_kind::node && it.node && it.node->is_object())
        if (const value* t = it.node->find("type"); t && t->is_string() && defs_.is_resource_type(t->text()))
          out.push_back(reference_stub(it, t->text() + "/"));
      continue;
    }
    bool found = false;
    if (ref[0] == '#') {
      const value* host = resource_;
      if (const value* c = host ? host->find("contained") : nullptr; c && c->is_array()) {
        for (const value& res : c->items()) {
          const value* id = res.find("id");
          if (id && id->text() == ref.substr(1)) out.push_back(resource_item(res, defs_));
        }
      }
      continue;
    }
    const value* bundle = root_;
    const value* rt = bundle ? bundle->find("resourceType") : nullptr;
    const value* entries = rt && rt->text() == "Bundle" ? bundle->find("entry") : nullptr;
    if (!entries || !entries->is_array()) {
      out.push_back(reference_stub(it, ref));
      continue;
    }
    for (const value& e : entries->items()) {
      const value* res = e.find("resource");
      if (!res) continue;
      const value* full = e.find("fullUrl");
      bool match = full && full->text() == ref;
      if (!match) {
        const value* t = res->find("resourceType");
        const value* id = res->find("id");
        if (t && id) {
          std::string local = t->text() + "/" + id->text();
          match = ref == local || ref.ends_with("/" + local) ||
                  (ref.find("/_history/") != std::string::npos && ref.starts_with(local + "/_history/"));
        }
      }
      if (match) {
        out.push_back(resource_item(*res, defs_));
        found = true;
        break;
      }
    }
    if (!found) out.push_back(reference_stub(it, ref));
  }
  return out;
}

collection evaluator::call(const ast& n, const frame& f) {
  fn id = static_cast<fn>(n.function);
  // iif evaluates its arguments against its own input when it has one.
  if (id == fn::f_iif) {
    collection input_holder;
    frame g = f;
    if (n.input) {
      input_holder = eval(*n.input, f);
      if (input_holder.size() > 1) throw evaluation_error("iif() needs at most one input item");
      g.this_ = &input_holder;
    }
    collection c = eval(*n.args[0], g);
    if (opt_.strict && c.size() == 1 && to_system(c[0], defs_).kind != item_kind::boolean)
      throw evaluation_error("iif() criterion is not a boolean");
    auto t = truth(c, "iif");
    if (t && *t) return eval(*n.args[1], g);
    if (n.args.size() > 2) return eval(*n.args[2], g);
    return {};
  }
  if (opt_.check_ordered_functions && n.input && n.input->kind == node_kind::function &&
      (id == fn::f_first || id == fn::f_last || id == fn::f_tail || id == fn::f_skip || id == fn::f_take)) {
    fn inner = static_cast<fn>(n.input->function);
    if (inner == fn::f_children || inner == fn::f_descendants)
      throw evaluation_error(std::string(function_at(n.function).name) + "() on the unordered result of " +
                             function_at(n.input->function).name + "()");
  }
  collection holder;
  if (n.input) holder = eval(*n.input, f);
  const collection& in = n.input ? holder : *f.this_;
  switch (id) {
    case fn::f_empty: return collection{item::make_boolean(in.empty())};
    case fn::f_exists:
      if (n.args.empty()) return collection{item::make_boolean(!in.empty())};
      return collection{item::make_boolean(!iterate_where(in, *n.args[0], false).empty())};
    case fn::f_all: return collection{item::make_boolean(iterate_where(in, *n.args[0], false).size() == in.size())};
    case fn::f_allTrue:
    case fn::f_anyTrue:
    case fn::f_allFalse:
    case fn::f_anyFalse: {
      bool want = id == fn::f_allTrue || id == fn::f_anyTrue;
      bool all = id == fn::f_allTrue || id == fn::f_allFalse;
      bool result = all;
      for (const item& x : in) {
        item v = to_system(x, defs_);
        if (v.kind != item_kind::boolean) throw evaluation_error("expected booleans");
        if (all && v.boolean_value != want) result = false;
        if (!all && v.boolean_value == want) result = true;
      }
      return collection{item::make_boolean(result)};
    }
    case fn::f_subsetOf:
    case fn::f_supersetOf: {
      collection other = eval(*n.args[0], f);
      const collection& sub = id == fn::f_subsetOf ? in : other;
      const collection& super = id == fn::f_subsetOf ? other : in;
      for (const item& x : sub)
        if (!contains_item(super, x)) return collection{item::make_boolean(false)};
      return collection{item::make_boolean(true)};
    }
    case fn::f_count: return collection{item::make_integer(static_cast<std::int64_t>(in.size()))};
    case fn::f_distinct: return distinct(in);
    case fn::f_isDistinct: return collection{item::make_boolean(distinct(in).size() == in.size())};
    case fn::f_where: return iterate_where(in, *n.args[0], false);
    case fn::f_select: return iterate_where(in, *n.args[0], true);
    case fn::f_repeat: {
      collection out;
      collection current = in;
      for (int round = 0; !current.empty() && round < 1000; ++round) {
        collection next = iterate_where(current, *n.args[0], true);
        current.clear();
        for (item& x : next) {
          bool seen = false;
          for (const item& y : out) {
            if (x.kind == item_kind::node && y.kind == item_kind::node) {
              if (x.node == y.node && x.companion == y.companion) seen = true;
            } else {
              auto e = items_equal(x, y, defs_);
              seen = e && *e;
            }
            if (seen) break;
          }
          if (!seen) {
            out.push_back(x);
            current.push_back(std::move(x));
          }
        }
      }
      return out;
    }
    case fn::f_ofType: {
      collection out;
      for (const item& x : in)
        if (type_matches(x, n.type_namespace, n.type_name, true)) out.push_back(x);
      return out;
    }
    case fn::f_is:
      if (in.empty()) return {};
      if (in.size() > 1) throw evaluation_error("is() needs a single item");
      return collection{item::make_boolean(type_matches(in[0], n.type_namespace, n.type_name, false))};
    case fn::f_as:
      if (in.empty()) return {};
      if (in.size() > 1) throw evaluation_error("as() needs a single item");
      if (type_matches(in[0], n.type_namespace, n.type_name, true)) return in;
      return {};
    case fn::f_single:
      if (in.size() > 1) throw evaluation_error("single() on " + std::to_string(in.size()) + " items");
      return in;
    case fn::f_first: return in.empty() ? collection{} : collection{in.front()};
    case fn::f_last: return in.empty() ? collection{} : collection{in.back()};
    case fn::f_tail: return in.size() <= 1 ? collection{} : collection(in.begin() + 1, in.end());
    case fn::f_skip:
    case fn::f_take: {
      auto k = integer_arg(*n.args[0], f);
      if (!k) return id == fn::f_skip ? in : collection{};
      std::size_t num = *k < 0 ? 0 : static_cast<std::size_t>(*k);
      num = std::min(num, in.size());
      if (id == fn::f_skip) return collection(in.begin() + static_cast<std::ptrdiff_t>(num), in.end());
      return collection(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(num));
    }
    case fn::f_intersect: {
      collection other = eval(*n.args[0], f);
      collection out;
      for (const item& x : in)
        if (contains_item(other, x) && !contains_item(out, x)) out.push_back(x);
      return out;
    }
    case fn::f_exclude: {
      collection other = eval(*n.args[0], f);
      collection out;
      for (const item& x : in)
        if (!contains_item(other, x)) out.push_back(x);
      return out;
    }
    case fn::f_union: {
      collection other = eval(*n.args[0], f);
      return distinct_union(in, &other);
    }
    case fn::f_combine: {
      collection other = eval(*n.args[0], f);
      collection out = in;
      out.insert(out.end(), other.begin(), other.end());
      return out;
    }
    case fn::f_toBoolean:
    case fn::f_convertsToBoolean:
    case fn::f_toInteger:
    case fn::f_convertsToInteger:
    case fn::f_toDecimal:
    case fn::f_convertsToDecimal:
    case fn::f_toString:
    case fn::f_convertsToString:
    case fn::f_toDate:
    case fn::f_convertsToDate:
    case fn::f_toDateTime:
    case fn::f_convertsToDateTime:
    case fn::f_toTime:
    case fn::f_convertsToTime:
    case fn::f_convertsToQuantity:
      return convert(id, in);
    case fn::f_toQuantity: {
      collection q = convert(id, in);
      if (q.empty() || n.args.empty()) return q;
      auto unit = string_arg(*n.args[0], f);
      if (!unit) return q;
      if (q[0].string_value == *unit) return q;
      if (!units_comparable(q[0].string_value, *unit)) return {};
      item one = item::make_quantity(decimal{1, 0}, *unit);
      auto ratio = quantity_multiply(q[0], one, true);
      if (!ratio) return {};
      return collection{item::make_quantity(ratio->decimal_value, *unit)};
    }
    case fn::f_indexOf:
    case fn::f_substring:
    case fn::f_startsWith:
    case fn::f_endsWith:
    case fn::f_contains:
    case fn::f_upper:
    case fn::f_lower:
    case fn::f_replace:
    case fn::f_matches:
    case fn::f_matchesFull:
    case fn::f_replaceMatches:
    case fn::f_length:
    case fn::f_toChars:
    case fn::f_trim:
    case fn::f_split:
    case fn::f_encode:
    case fn::f_decode:
    case fn::f_escape:
    case fn::f_unescape:
      return strings(id, in, n, f);
    case fn::f_join: {
      std::string sep;
      if (!n.args.empty()) {
        auto s = string_arg(*n.args[0], f);
        if (s) sep = *s;
      }
      std::string out;
      for (std::size_t i = 0; i < in.size(); ++i) {
        item v = to_system(in[i], defs_);
        if (v.kind != item_kind::string) throw evaluation_error("join() needs strings");
        if (i) out += sep;
        out += v.string_value;
      }
      return collection{item::make_string(out)};
    }
    case fn::f_abs:
    case fn::f_ceiling:
    case fn::f_exp:
    case fn::f_floor:
    case fn::f_ln:
    case fn::f_log:
    case fn::f_power:
    case fn::f_round:
    case fn::f_sqrt:
    case fn::f_truncate:
      return math(id, in, n, f);
    case fn::f_children: {
      collection out;
      for (const item& x : in) children_of(x, out);
      return out;
    }
    case fn::f_descendants: {
      collection out;
      collection current = in;
      while (!current.empty()) {
        collection next;
        for (const item& x : current) children_of(x, next);
        out.insert(out.end(), next.begin(), next.end());
        current = std::move(next);
      }
      return out;
    }
    case fn::f_trace: {
      if (opt_.trace) {
        auto name = string_arg(*n.args[0], f);
        if (n.args.size() > 1) opt_.trace(name.value_or(""), iterate_where(in, *n.args[1], true));
        else opt_.trace(name.value_or(""), in);
      }
      return in;
    }
    case fn::f_now: {
      item t;
      t.kind = item_kind::datetime;
      t.temporal_value = now_value();
      return collection{t};
    }
    case fn::f_today: {
      item t;
      t.kind = item_kind::date;
      temporal v = now_value();
      v.prec = precision::day;
      v.hour = v.minute = v.second = v.millisecond = 0;
      v.has_tz = false;
      t.temporal_value = v;
      return collection{t};
    }
    case fn::f_timeOfDay: {
      item t;
      t.kind = item_kind::time;
      temporal v = now_value();
      v.year = v.month = v.day = 0;
      v.has_tz = false;
      t.temporal_value = v;
      return collection{t};
    }
    case fn::f_not: {
      auto t = truth(in, "not");
      if (!t) return {};
      return collection{item::make_boolean(!*t)};
    }
    case fn::f_type: {
      collection out;
      for (const item& x : in) {
        item t;
        t.kind = item_kind::type_info;
        if (x.kind == item_kind::node) {
          t.string_value = "FHIR";
          t.fhir_type = x.fhir_type;
        } else {
          t.string_value = "System";
          static const char* const names[] = {"", "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity", "TypeInfo"};
          t.fhir_type = names[static_cast<int>(x.kind)];
        }
        out.push_back(std::move(t));
      }
      return out;
    }
    case fn::f_aggregate: {
      collection total;
      if (n.args.size() > 1) total = eval(*n.args[1], f);
      collection one(1);
      for (std::size_t i = 0; i < in.size(); ++i) {
        one[0] = in[i];
        frame g;
        g.this_ = &one;
        g.index = static_cast<std::int64_t>(i);
        g.total = &total;
        collection next = eval(*n.args[0], g);
        total = std::move(next);
      }
      return total;
    }
    case fn::f_sort: {
      struct keyed {
        item it;
        std::vector<collection> keys;
      };
      std::vector<keyed> rows;
      std::vector<bool> desc;
      std::vector<const ast*> exprs;
      for (const auto& a : n.args) {
        if (a->kind == node_kind::unary_minus) {
          desc.push_back(true);
          exprs.push_back(a->input.get());
        } else {
          desc.push_back(false);
          exprs.push_back(a.get());
        }
      }
      collection one(1);
      for (std::size_t i = 0; i < in.size(); ++i) {
        keyed k{in[i], {}};
        one[0] = in[i];
        frame g;
        g.this_ = &one;
        g.index = static_cast<std::int64_t>(i);
        for (const ast* e : exprs) k.keys.push_back(eval(*e, g));
        if (exprs.empty()) k.keys.push_back(one);
        rows.push_back(std::move(k));
      }
      if (exprs.empty()) desc.push_back(false);
      std::stable_sort(rows.begin(), rows.end(), [&](const keyed& a, const keyed& b) {
        for (std::size_t k = 0; k < a.keys.size(); ++k) {
          const collection& x = a.keys[k];
          const collection& y = b.keys[k];
          if (x.empty() || y.empty()) {
            if (x.empty() != y.empty()) return x.empty();  // empty keys first, either direction
            continue;
          }
          auto c = items_compare(x[0], y[0], defs_);
          if (!c || *c == 0) continue;
          return desc[k] ? *c > 0 : *c < 0;
        }
        return false;
      });
      collection out;
      for (auto& r : rows) out.push_back(std::move(r.it));
      return out;
    }
    case fn::f_extension: {
      auto url = string_arg(*n.args[0], f);
      collection out;
      if (!url) return out;
      collection ext;
      for (const item& x : in) navigate(x, "extension", ext, 0);
      for (item& e : ext) {
        const value* u = e.node ? e.node->find("url") : nullptr;
        if (u && u->text() == *url) out.push_back(std::move(e));
      }
      return out;
    }
    case fn::f_hasValue: {
      if (in.size() != 1) return collection{item::make_boolean(false)};
      const item& x = in[0];
      bool has = x.kind != item_kind::node || (x.node && !x.node->is_object() && !x.node->is_array() && !x.node->is_null());
      return collection{item::make_boolean(has)};
    }
    case fn::f_getValue: {
      if (in.size() != 1) return {};
      const item& x = in[0];
      if (x.kind != item_kind::node) return in;
      if (!x.node || x.node->is_object() || x.node->is_array() || x.node->is_null()) return {};
      return collection{to_system(x, defs_)};
    }
    case fn::f_resolve: return resolve(in);
    case fn::f_conformsTo: {
      auto url = string_arg(*n.args[0], f);
      if (!url || in.empty()) return {};
      const std::string prefix = "http://hl7.org/fhir/StructureDefinition/";
      if (!url->starts_with(prefix) || !defs_.find_type(url->substr(prefix.size())))
        throw evaluation_error("conformsTo(): profile '" + *url + "' is not known (only core definitions are)");
      std::string type = url->substr(prefix.size());
      bool all = true;
      for (const item& x : in) all = all && type_matches(x, "FHIR", type, false);
      return collection{item::make_boolean(all)};
    }
    case fn::f_htmlChecks: return collection{item::make_boolean(true)};
    case fn::f_memberOf: throw evaluation_error("memberOf() needs a terminology service (not supported)");
    case fn::f_elementDefinition:
    case fn::f_slice:
    case fn::f_checkModifiers:
      throw evaluation_error(std::string(function_at(n.function).name) + "() needs profile support (not supported)");
    case fn::f_precision: {
      if (in.empty()) return {};
      item v = to_system(single(in, "precision"), defs_);
      if (v.kind == item_kind::decimal) return collection{item::make_integer(v.decimal_value.scale)};
      if (v.kind == item_kind::integer) return collection{item::make_integer(0)};
      if (v.kind == item_kind::date || v.kind == item_kind::datetime || v.kind == item_kind::time)
        return collection{item::make_integer(digits_of(v.temporal_value.prec, v.kind))};
      throw evaluation_error("precision() needs a number or date/time");
    }
    case fn::f_lowBoundary: return boundary(in, n, f, false);
    case fn::f_highBoundary: return boundary(in, n, f, true);
    case fn::f_comparable: {
      collection other = eval(*n.args[0], f);
      if (in.empty() || other.empty()) return {};
      item a = to_system(single(in, "comparable"), defs_), b = to_system(single(other, "comparable"), defs_);
      if (a.kind != item_kind::quantity || b.kind != item_kind::quantity) throw evaluation_error("comparable() needs quantities");
      return collection{item::make_boolean(units_comparable(a.string_value, b.string_value))};
    }
    default: break;
  }
  throw evaluation_error(std::string("function ") + function_at(n.function).name + "() is not implemented");
}

}  // namespace yilian::fhir::fhirpath::detail
