# The one Tally image: operator, ledger service, migrations, and the instance manager
# that the PostgreSQL pods' init container copies out of it.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /tally .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tally /tally
USER 65532:65532
ENTRYPOINT ["/tally"]
